//! Embeds the web console (`web/`) in the binary: each file with its gzip form, made here
//! once, and an ETag from its content. No network, no front-end tool chain: the console is
//! plain files, so a bare `cargo build` is the whole build.

use std::io::Write;
use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files(&path, out);
        } else if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.starts_with('.'))
        {
            out.push(path);
        }
    }
}

fn mime(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
    {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let web = root.join("web");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    println!("cargo:rerun-if-changed=web");
    let mut paths = Vec::new();
    files(&web, &mut paths);
    let mut table = String::from("&[\n");
    for (i, path) in paths.iter().enumerate() {
        println!("cargo:rerun-if-changed={}", path.display());
        let bytes = std::fs::read(path).expect("a web file is readable");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&bytes).expect("gzip in memory");
        let gz = gz.finish().expect("gzip in memory");
        let gz_path = out_dir.join(format!("web-{i}.gz"));
        std::fs::write(&gz_path, &gz).expect("OUT_DIR is writable");
        use sha2::Digest;
        let digest = sha2::Sha256::digest(&bytes);
        let etag: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        let route = path
            .strip_prefix(&web)
            .expect("under web/")
            .to_string_lossy()
            .replace('\\', "/");
        table.push_str(&format!(
            "    Asset {{ path: {route:?}, mime: {mime:?}, etag: \"\\\"{etag}\\\"\", raw: include_bytes!({raw:?}), gzip: include_bytes!({gz:?}) }},\n",
            mime = mime(path),
            raw = path.display().to_string(),
            gz = gz_path.display().to_string(),
        ));
    }
    table.push(']');
    std::fs::write(out_dir.join("web_assets.rs"), table).expect("OUT_DIR is writable");
}
