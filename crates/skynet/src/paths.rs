//! Where `scripts/setup.sh` puts what is not in git: the ONNX Runtime library, model weights
//! and media. `SKYNET_DATA_DIR` moves it all; otherwise `$XDG_DATA_HOME/skynet` or
//! `~/.local/share/skynet`.

pub use skynet_core::config::{DATA_DIR_ENV, data_dir, expand_vars};
