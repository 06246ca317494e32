//! Sweeps. (Skeleton)
