//! Plots. (Skeleton)
