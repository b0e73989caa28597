//! A length field claiming a huge frame must not make the log allocate it. A counting global
//! allocator records the largest single allocation (this file holds one test so nothing
//! else allocates concurrently).

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use gregor::log::{NoHooks, Partition, PartitionReader, TopicConfig};

struct MaxAlloc;
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for MaxAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: MaxAlloc = MaxAlloc;

#[test]
fn huge_length_fields_do_not_allocate() {
    const LIMIT: usize = 4 << 20; // chunk buffers are 1 MiB
    for claimed in [u32::MAX, 60 << 20, 64 << 20] {
        let dir = tempfile::tempdir().unwrap();
        let config = TopicConfig::default();
        let (mut p, _) = Partition::open(dir.path(), config.clone(), Arc::new(NoHooks)).unwrap();
        for i in 0..100 {
            p.append(i, b"k", Some(b"v")).unwrap();
        }
        p.sync().unwrap();
        drop(p);
        let seg = dir.path().join("00000000000000000000.log");
        let mut b = fs::read(&seg).unwrap();
        b.extend_from_slice(&claimed.to_le_bytes());
        b.extend_from_slice(&[0xEE; 200]);
        fs::write(&seg, &b).unwrap();
        drop(b);

        LARGEST.store(0, Ordering::SeqCst);
        // A read-only reader stops at (or rejects) the frame without allocating it.
        let mut r = PartitionReader::open(dir.path(), 0).unwrap();
        let _ = r.read(1000);
        gregor::log::verify_partition(dir.path()).unwrap();
        let (mut p, report) = Partition::open(dir.path(), config, Arc::new(NoHooks)).unwrap();
        assert!(report.torn_tail.is_some());
        assert_eq!(p.read(0, 1000).unwrap().len(), 100);
        let largest = LARGEST.load(Ordering::SeqCst);
        assert!(
            largest < LIMIT,
            "claimed {claimed}: allocated {largest} bytes at once"
        );
    }
}
