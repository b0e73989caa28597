//! gregor
