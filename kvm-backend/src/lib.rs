//! KVM guests for the FT protocol (work in progress).
