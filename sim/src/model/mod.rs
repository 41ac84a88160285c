//! The model guest (work in progress).
