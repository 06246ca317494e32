//! (filled in by issue 21 work)
