//! Evidence snapshots: the frame an incident's new detections came from, annotated (boxes,
//! labels, the camera's zones) with every privacy mask blurred, as a JPEG beside the outbox.
//!
//! - [`EvidenceSettings`]: the `[evidence]` table; [`EvidenceConfig`] once checked.
//! - [`render`]: the annotated image; [`blur_polygons`] alone for the privacy masks.
//! - [`EvidenceStore`]: JPEG encoding, the SHA-256 the incident references, and the file
//!   written atomically as `<dir>/<incident id>/<revision>.jpg`.
//! - [`sweep`] and [`spawn_sweeper`]: files older than `retain_days` deleted, off the hot path.
//!
//! Drawing is done here rather than with `imageproc`: boxes, outlines and a box blur are a
//! few dozen lines, while `imageproc` (even without default features) pulls `nalgebra`,
//! `rand` and `num` into the build, and its text drawing needs a TTF font we would have to
//! ship. Labels use the small bitmap font below instead.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use geo::{Contains, LineString, Point as GeoPoint, Polygon};
use image::{Rgb, RgbImage};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use skynet_core::config::check_range;
use skynet_core::{ConfigContext, Detection, FieldError, FrameImage, PixelOrder, Shutdown};
use skynet_detect::Zone;

#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error(
        "the frame's pixels are shorter than its size says ({width}x{height}, stride {stride})"
    )]
    ShortImage {
        width: u32,
        height: u32,
        stride: usize,
    },
    #[error("JPEG encoding failed: {0}")]
    Encode(#[from] image::ImageError),
    #[error("incident id `{0}` cannot name a directory")]
    BadIncidentId(String),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

// ---- Config ---------------------------------------------------------------------------

/// `[evidence]` as written. Every key has a default, so the table may be left out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceSettings {
    /// Take snapshots at all. Default true.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Where the files go; default `${SKYNET_STATE_DIR}/evidence` when that variable is
    /// set, else `${SKYNET_DATA_DIR}/evidence`.
    pub dir: Option<String>,
    /// Days a file is kept. Default 30.
    #[serde(default = "default_retain_days")]
    pub retain_days: f64,
    /// What the incident's `url` starts with; default `file://` and the directory.
    pub url_base: Option<String>,
    /// JPEG quality, 1 to 100. Default 80.
    #[serde(default = "default_jpeg_quality")]
    pub jpeg_quality: i64,
    /// At most one snapshot per incident in this many seconds of event time. Default 5.
    #[serde(default = "default_min_interval")]
    pub min_interval_s: f64,
    /// At most this many snapshots per second of wall time over all incidents, so a burst
    /// of incidents cannot stall the rules stage on encoding. Default 4.
    #[serde(default = "default_max_per_s")]
    pub max_per_s: f64,
}

fn default_enabled() -> bool {
    true
}
fn default_retain_days() -> f64 {
    30.0
}
fn default_jpeg_quality() -> i64 {
    80
}
fn default_min_interval() -> f64 {
    5.0
}
fn default_max_per_s() -> f64 {
    4.0
}

impl Default for EvidenceSettings {
    fn default() -> Self {
        Self {
            enabled: default_enabled(),
            dir: None,
            retain_days: default_retain_days(),
            url_base: None,
            jpeg_quality: default_jpeg_quality(),
            min_interval_s: default_min_interval(),
            max_per_s: default_max_per_s(),
        }
    }
}

/// `[evidence]` checked, its paths resolved.
#[derive(Debug, Clone)]
pub struct EvidenceConfig {
    pub enabled: bool,
    pub dir: PathBuf,
    /// Ends with `/`: a file's url is this and `<incident id>/<revision>.jpg`.
    pub url_base: String,
    pub retain: Duration,
    pub jpeg_quality: u8,
    pub min_interval: chrono::Duration,
    pub max_per_s: f64,
}

impl EvidenceSettings {
    /// Resolves `dir` like every path in the config (`${VAR}` expanded, relative to the
    /// config file) and checks the numbers; errors name the key.
    pub fn validate(&self, cx: &ConfigContext) -> Result<EvidenceConfig, FieldError> {
        let dir = match &self.dir {
            Some(dir) => cx.resolve_path("dir", dir)?,
            None => {
                // The state directory when the operator names one (as configs/city.toml
                // does for the outbox), else the data directory.
                let state = std::env::var_os("SKYNET_STATE_DIR").is_some_and(|v| !v.is_empty());
                let base = if state {
                    "${SKYNET_STATE_DIR}"
                } else {
                    "${SKYNET_DATA_DIR}"
                };
                cx.resolve_path("dir", &format!("{base}/evidence"))?
            }
        };
        let days = check_range("retain_days", self.retain_days, 1.0 / 24.0, 36_525.0)
            .map_err(|e| FieldError::new(e.field, format!("{} days", e.message)))?;
        let quality = check_range("jpeg_quality", self.jpeg_quality as f64, 1.0, 100.0)?;
        let min_interval =
            skynet_core::config::seconds_in("min_interval_s", self.min_interval_s, 0.0, 86_400.0)?;
        let max_per_s = check_range("max_per_s", self.max_per_s, 0.01, 1000.0)?;
        let url_base = match &self.url_base {
            Some(base) => {
                let base = cx.expand("url_base", base)?;
                let parsed = url::Url::parse(&base).map_err(|e| {
                    FieldError::new(
                        "url_base",
                        format!(
                            "`url_base` must be an absolute URL like https://host/evidence/: {e}"
                        ),
                    )
                })?;
                if parsed.cannot_be_a_base() {
                    return Err(FieldError::new(
                        "url_base",
                        format!("`url_base` `{base}` cannot have a path appended"),
                    ));
                }
                with_slash(base)
            }
            None => file_url(&dir),
        };
        Ok(EvidenceConfig {
            enabled: self.enabled,
            dir,
            url_base,
            retain: Duration::from_secs_f64(days * 86_400.0),
            jpeg_quality: quality as u8,
            min_interval,
            max_per_s,
        })
    }
}

fn with_slash(mut base: String) -> String {
    if !base.ends_with('/') {
        base.push('/');
    }
    base
}

/// `file://` and the directory, absolute, as a URL a browser opens.
fn file_url(dir: &Path) -> String {
    std::path::absolute(dir)
        .ok()
        .and_then(|abs| url::Url::from_directory_path(abs).ok())
        .map(String::from)
        .unwrap_or_else(|| with_slash(format!("file://{}", dir.display())))
}

// ---- Rendering ------------------------------------------------------------------------

const BOX_COLOUR: Rgb<u8> = Rgb([230, 40, 40]);
const ZONE_COLOUR: Rgb<u8> = Rgb([255, 210, 0]);
const TEXT_COLOUR: Rgb<u8> = Rgb([255, 255, 255]);

/// A frame's pixels as an RGB image (the frame may be BGR, with padded rows).
pub fn to_rgb(image: &FrameImage) -> Result<RgbImage, EvidenceError> {
    let (w, h) = (image.width as usize, image.height as usize);
    let row = w * 3;
    let short = || EvidenceError::ShortImage {
        width: image.width,
        height: image.height,
        stride: image.stride,
    };
    if image.stride < row {
        return Err(short());
    }
    let data: &[u8] = &image.data;
    let mut out = Vec::with_capacity(row * h);
    for y in 0..h {
        let start = y * image.stride;
        let line = data.get(start..start + row).ok_or_else(short)?;
        match image.order {
            PixelOrder::Rgb => out.extend_from_slice(line),
            PixelOrder::Bgr => {
                for px in line.chunks_exact(3) {
                    out.extend_from_slice(&[px[2], px[1], px[0]]);
                }
            }
        }
    }
    RgbImage::from_raw(image.width, image.height, out).ok_or_else(short)
}

/// What to draw on a snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Annotations<'a> {
    /// Boxes in the image's pixels.
    pub detections: &'a [Detection],
    pub zones: &'a [Zone],
    /// Privacy masks, `[x, y]` fractions of the frame: blurred before anything is drawn.
    pub privacy_masks: &'a [Vec<[f64; 2]>],
}

/// Detections in a camera's pixels (`camera_size`), moved onto `image`, which may be smaller
/// (scaled for the model).
pub fn boxes_on_image(
    detections: &[Detection],
    camera_size: (u32, u32),
    image: &FrameImage,
) -> Vec<Detection> {
    let sx = image.width as f32 / camera_size.0.max(1) as f32;
    let sy = image.height as f32 / camera_size.1.max(1) as f32;
    detections
        .iter()
        .map(|d| Detection {
            bbox: d.bbox.scaled(sx, sy),
            ..d.clone()
        })
        .collect()
}

/// The annotated snapshot: privacy masks blurred, then zone outlines, boxes and labels.
pub fn render(image: &FrameImage, annotations: Annotations<'_>) -> Result<RgbImage, EvidenceError> {
    let mut rgb = to_rgb(image)?;
    blur_polygons(&mut rgb, annotations.privacy_masks);
    let (w, h) = (f64::from(rgb.width()), f64::from(rgb.height()));
    for zone in annotations.zones {
        let points: Vec<(i64, i64)> = zone
            .points()
            .iter()
            .map(|[x, y]| ((x * w).round() as i64, (y * h).round() as i64))
            .collect();
        for (i, &a) in points.iter().enumerate() {
            let b = points[(i + 1) % points.len()];
            draw_line(&mut rgb, a, b, ZONE_COLOUR);
        }
    }
    for d in annotations.detections {
        let b = d.bbox.clamp_to(rgb.width() as f32, rgb.height() as f32);
        let (x1, y1, x2, y2) = (
            b.x1.round() as i64,
            b.y1.round() as i64,
            b.x2.round() as i64,
            b.y2.round() as i64,
        );
        // Two pixels wide, so the box stays visible after JPEG compression.
        for inset in 0..2 {
            draw_rect(
                &mut rgb,
                (x1 + inset, y1 + inset),
                (x2 - inset, y2 - inset),
                BOX_COLOUR,
            );
        }
        let label = match d.track {
            Some(track) => format!("{} #{track} {:.2}", d.label, d.score),
            None => format!("{} {:.2}", d.label, d.score),
        };
        let text_w = label.chars().count() as i64 * GLYPH_ADVANCE + 2;
        let text_h = GLYPH_HEIGHT + 2;
        // Above the box when there is room, else inside its top edge.
        let top = if y1 >= text_h { y1 - text_h } else { y1 };
        fill_rect(&mut rgb, (x1, top), (x1 + text_w, top + text_h), BOX_COLOUR);
        draw_text(&mut rgb, (x1 + 2, top + 1), &label, TEXT_COLOUR);
    }
    Ok(rgb)
}

/// Blurs each polygon (`[x, y]` fractions of the image) in place: pixels whose centre lies
/// inside take a strong blur, every other pixel is left exactly as it was.
///
/// Three box-blur passes each way approximate a gaussian; the radius grows with the image
/// (13 pixels at 416 wide) so a face or a plate is unreadable at any analysis size.
pub fn blur_polygons(img: &mut RgbImage, masks: &[Vec<[f64; 2]>]) {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return;
    }
    let radius = (w.max(h) / 32).max(4) as i64;
    for mask in masks {
        let ring: Vec<(f64, f64)> = mask
            .iter()
            .map(|[x, y]| (x * f64::from(w), y * f64::from(h)))
            .collect();
        if ring.len() < 3 {
            continue;
        }
        let polygon = Polygon::new(LineString::from(ring.clone()), Vec::new());
        let (min_x, max_x, min_y, max_y) = ring.iter().fold(
            (f64::MAX, f64::MIN, f64::MAX, f64::MIN),
            |(a, b, c, d), &(x, y)| (a.min(x), b.max(x), c.min(y), d.max(y)),
        );
        let clampx = |v: f64| (v.max(0.0) as i64).min(i64::from(w));
        let clampy = |v: f64| (v.max(0.0) as i64).min(i64::from(h));
        let (x0, x1) = (clampx(min_x.floor()), clampx(max_x.ceil()));
        let (y0, y1) = (clampy(min_y.floor()), clampy(max_y.ceil()));
        if x0 >= x1 || y0 >= y1 {
            continue;
        }
        // The blurred area reaches `3 * radius` past the mask, so its edge pixels are
        // blurred with real neighbours rather than a repeated border.
        let pad = 3 * radius;
        let rx0 = (x0 - pad).max(0);
        let ry0 = (y0 - pad).max(0);
        let rx1 = (x1 + pad).min(i64::from(w));
        let ry1 = (y1 + pad).min(i64::from(h));
        let (rw, rh) = ((rx1 - rx0) as usize, (ry1 - ry0) as usize);
        let mut region = vec![0f32; rw * rh * 3];
        for y in 0..rh {
            for x in 0..rw {
                let p = img.get_pixel((rx0 as usize + x) as u32, (ry0 as usize + y) as u32);
                let at = (y * rw + x) * 3;
                region[at..at + 3].copy_from_slice(&[
                    f32::from(p[0]),
                    f32::from(p[1]),
                    f32::from(p[2]),
                ]);
            }
        }
        let mut scratch = vec![0f32; region.len()];
        for _ in 0..3 {
            box_blur_rows(&region, &mut scratch, rw, rh, radius as usize);
            box_blur_columns(&scratch, &mut region, rw, rh, radius as usize);
        }
        for y in y0..y1 {
            for x in x0..x1 {
                let centre = GeoPoint::new(x as f64 + 0.5, y as f64 + 0.5);
                if !polygon.contains(&centre) {
                    continue;
                }
                let at = (((y - ry0) as usize) * rw + (x - rx0) as usize) * 3;
                let px = Rgb([
                    region[at].round().clamp(0.0, 255.0) as u8,
                    region[at + 1].round().clamp(0.0, 255.0) as u8,
                    region[at + 2].round().clamp(0.0, 255.0) as u8,
                ]);
                img.put_pixel(x as u32, y as u32, px);
            }
        }
    }
}

/// Mean over `[x - r, x + r]` along each row, the window clipped at the region's edges.
fn box_blur_rows(src: &[f32], dst: &mut [f32], w: usize, h: usize, r: usize) {
    for y in 0..h {
        let row = &src[y * w * 3..(y + 1) * w * 3];
        let out = &mut dst[y * w * 3..(y + 1) * w * 3];
        box_blur_line(row, out, w, 3, r);
    }
}

fn box_blur_columns(src: &[f32], dst: &mut [f32], w: usize, h: usize, r: usize) {
    let mut column = vec![0f32; h * 3];
    let mut out = vec![0f32; h * 3];
    for x in 0..w {
        for y in 0..h {
            column[y * 3..y * 3 + 3].copy_from_slice(&src[(y * w + x) * 3..(y * w + x) * 3 + 3]);
        }
        box_blur_line(&column, &mut out, h, 3, r);
        for y in 0..h {
            dst[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&out[y * 3..y * 3 + 3]);
        }
    }
}

/// A running sum over `n` pixels of `channels` values each.
fn box_blur_line(src: &[f32], dst: &mut [f32], n: usize, channels: usize, r: usize) {
    if n == 0 {
        return;
    }
    for c in 0..channels {
        let value = |i: usize| src[i * channels + c];
        let mut sum: f32 = (0..=r.min(n - 1)).map(value).sum();
        let mut count = r.min(n - 1) + 1;
        for i in 0..n {
            dst[i * channels + c] = sum / count as f32;
            // Slide: the pixel `r + 1` ahead enters, the one `r` behind leaves.
            if i + r + 1 < n {
                sum += value(i + r + 1);
                count += 1;
            }
            if i >= r {
                sum -= value(i - r);
                count -= 1;
            }
        }
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, colour: Rgb<u8>) {
    if x >= 0 && y >= 0 && x < i64::from(img.width()) && y < i64::from(img.height()) {
        img.put_pixel(x as u32, y as u32, colour);
    }
}

/// Bresenham, two pixels wide (the second one below), clipped to the image.
fn draw_line(img: &mut RgbImage, (mut x, mut y): (i64, i64), (x2, y2): (i64, i64), c: Rgb<u8>) {
    let (dx, dy) = ((x2 - x).abs(), -(y2 - y).abs());
    let (sx, sy) = (if x < x2 { 1 } else { -1 }, if y < y2 { 1 } else { -1 });
    let mut err = dx + dy;
    // Bounded by the line's length, whatever the input.
    for _ in 0..=(dx - dy) {
        put(img, x, y, c);
        put(img, x, y + 1, c);
        if x == x2 && y == y2 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

fn draw_rect(img: &mut RgbImage, (x1, y1): (i64, i64), (x2, y2): (i64, i64), c: Rgb<u8>) {
    for x in x1..=x2 {
        put(img, x, y1, c);
        put(img, x, y2, c);
    }
    for y in y1..=y2 {
        put(img, x1, y, c);
        put(img, x2, y, c);
    }
}

fn fill_rect(img: &mut RgbImage, (x1, y1): (i64, i64), (x2, y2): (i64, i64), c: Rgb<u8>) {
    let (x1, x2) = (x1.max(0), x2.min(i64::from(img.width())));
    let (y1, y2) = (y1.max(0), y2.min(i64::from(img.height())));
    for y in y1..y2 {
        for x in x1..x2 {
            put(img, x, y, c);
        }
    }
}

// ---- A 5x7 bitmap font: enough for model labels and scores ----------------------------

const GLYPH_HEIGHT: i64 = 7;
const GLYPH_ADVANCE: i64 = 6;

/// Rows top to bottom, the five low bits left to right. Letters are drawn as capitals
/// (they read better at 7 pixels); a character without a glyph is drawn as `?`.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1E],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        // Track ids are written `#7`.
        '#' => [0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A],
        ' ' => [0x00; 7],
        _ => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04],
    }
}

fn draw_text(img: &mut RgbImage, (x, y): (i64, i64), text: &str, c: Rgb<u8>) {
    for (n, ch) in text.chars().enumerate() {
        let left = x + n as i64 * GLYPH_ADVANCE;
        for (row, bits) in glyph(ch).iter().enumerate() {
            for col in 0..5 {
                if bits & (0x10 >> col) != 0 {
                    put(img, left + col, y + row as i64, c);
                }
            }
        }
    }
}

// ---- Storage --------------------------------------------------------------------------

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A written snapshot: where it is and what the incident references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub path: PathBuf,
    pub url: String,
    pub sha256: String,
}

/// Encodes snapshots and writes them under the evidence directory.
#[derive(Debug, Clone)]
pub struct EvidenceStore {
    dir: PathBuf,
    url_base: String,
    quality: u8,
}

impl EvidenceStore {
    pub fn new(config: &EvidenceConfig) -> Self {
        Self {
            dir: config.dir.clone(),
            url_base: with_slash(config.url_base.clone()),
            quality: config.jpeg_quality.clamp(1, 100),
        }
    }

    pub fn encode(&self, image: &RgbImage) -> Result<Vec<u8>, EvidenceError> {
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, self.quality)
            .encode_image(image)?;
        Ok(jpeg)
    }

    /// Writes `<dir>/<incident>/<revision>.jpg` atomically: a temporary file beside it,
    /// synced, then renamed, so a reader (or a crash) never sees half a file.
    pub fn write(
        &self,
        incident: &str,
        revision: u32,
        jpeg: &[u8],
    ) -> Result<Stored, EvidenceError> {
        // The id becomes a directory name: nothing that could climb out of `dir`.
        let safe = !incident.is_empty()
            && incident.len() <= 128
            && !incident.starts_with('.')
            && incident
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !safe {
            return Err(EvidenceError::BadIncidentId(incident.to_string()));
        }
        let folder = self.dir.join(incident);
        let name = format!("{revision}.jpg");
        let path = folder.join(&name);
        let tmp = folder.join(format!(".{name}.{}.tmp", std::process::id()));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| EvidenceError::Write { path, source }
        };
        std::fs::create_dir_all(&folder).map_err(io(&folder))?;
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(jpeg)?;
            f.sync_all()
        });
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, &path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&path)(e));
        }
        Ok(Stored {
            url: format!("{}{incident}/{name}", self.url_base),
            sha256: sha256_hex(jpeg),
            path,
        })
    }
}

/// Deletes files under `dir` (one level of incident folders) last modified more than
/// `retain` ago, and folders left empty. Returns how many files went.
pub fn sweep(dir: &Path, retain: Duration) -> std::io::Result<usize> {
    let Some(cutoff) = SystemTime::now().checked_sub(retain) else {
        return Ok(0);
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // Nothing written yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut deleted = 0;
    for folder in entries.flatten() {
        if !folder.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(files) = std::fs::read_dir(folder.path()) else {
            continue;
        };
        for file in files.flatten() {
            let old = file
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < cutoff);
            if old && file.file_type().is_ok_and(|t| t.is_file()) {
                match std::fs::remove_file(file.path()) {
                    Ok(()) => deleted += 1,
                    Err(e) => {
                        tracing::warn!(path = %file.path().display(), error = %e, "old evidence could not be deleted")
                    }
                }
            }
        }
        // Fails, harmlessly, while the folder still has files.
        let _ = std::fs::remove_dir(folder.path());
    }
    Ok(deleted)
}

/// How often the sweeper looks for old files.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Sweeps at start and then hourly on its own thread, until `stop` is triggered.
pub fn spawn_sweeper(
    dir: PathBuf,
    retain: Duration,
    stop: Shutdown,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("evidence-sweep".into())
        .spawn(move || {
            let deleted = metrics::counter!("skynet_evidence_deleted_total");
            while !stop.is_triggered() {
                match sweep(&dir, retain) {
                    Ok(n) => deleted.increment(n as u64),
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "evidence retention sweep failed")
                    }
                }
                let started = std::time::Instant::now();
                while started.elapsed() < SWEEP_EVERY && !stop.is_triggered() {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use skynet_core::BBox;

    /// dog.jpg from set-up's media, as the camera tests find it.
    fn dog() -> RgbImage {
        let candidates = [
            skynet_core::config::data_dir().join("media/dog.jpg"),
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/media/dog.jpg"),
        ];
        let path = candidates.iter().find(|p| p.is_file()).unwrap_or_else(|| {
            panic!("test media dog.jpg is missing (looked in {candidates:?}); run scripts/setup.sh")
        });
        image::open(path).expect("dog.jpg decodes").to_rgb8()
    }

    fn frame_image(rgb: &RgbImage, order: PixelOrder) -> FrameImage {
        let mut data = rgb.as_raw().clone();
        if order == PixelOrder::Bgr {
            for px in data.chunks_exact_mut(3) {
                px.swap(0, 2);
            }
        }
        FrameImage {
            width: rgb.width(),
            height: rgb.height(),
            stride: rgb.width() as usize * 3,
            order,
            data: data.into(),
        }
    }

    /// Mean and mean local variance (over 8x8 tiles) of the grey level, in a pixel rectangle.
    fn stats(img: &RgbImage, (x0, y0, x1, y1): (u32, u32, u32, u32)) -> (f64, f64) {
        let grey = |x: u32, y: u32| {
            let p = img.get_pixel(x, y);
            (f64::from(p[0]) + f64::from(p[1]) + f64::from(p[2])) / 3.0
        };
        let (mut total, mut n, mut variance, mut tiles) = (0.0, 0.0, 0.0, 0.0);
        for ty in (y0..y1 - 7).step_by(8) {
            for tx in (x0..x1 - 7).step_by(8) {
                let values: Vec<f64> = (ty..ty + 8)
                    .flat_map(|y| (tx..tx + 8).map(move |x| (x, y)))
                    .map(|(x, y)| grey(x, y))
                    .collect();
                let mean = values.iter().sum::<f64>() / 64.0;
                variance += values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 64.0;
                total += values.iter().sum::<f64>();
                n += 64.0;
                tiles += 1.0;
            }
        }
        (total / n, variance / tiles)
    }

    #[test]
    fn privacy_masks_are_blurred_and_everything_else_is_left_alone() {
        let original = dog();
        let (w, h) = original.dimensions();
        // The middle of the picture (the dog, the bicycle: plenty of detail).
        let mask = vec![[0.25, 0.25], [0.65, 0.25], [0.65, 0.7], [0.25, 0.7]];
        // A box away from the mask, in image pixels.
        let detection = Detection {
            label: "dog".into(),
            score: 0.91,
            bbox: BBox::new(
                w as f32 * 0.75,
                h as f32 * 0.1,
                w as f32 * 0.95,
                h as f32 * 0.3,
            ),
            track: Some(3),
        };
        let zone = Zone::new("z", &[[0.05, 0.8], [0.2, 0.8], [0.2, 0.95], [0.05, 0.95]]).unwrap();
        for order in [PixelOrder::Bgr, PixelOrder::Rgb] {
            let rendered = render(
                &frame_image(&original, order),
                Annotations {
                    detections: std::slice::from_ref(&detection),
                    zones: std::slice::from_ref(&zone),
                    privacy_masks: std::slice::from_ref(&mask),
                },
            )
            .unwrap();
            assert_eq!(rendered.dimensions(), (w, h));

            // Inside the mask (kept off its edge): local detail gone, brightness kept.
            let inside = (
                (w as f64 * 0.3) as u32,
                (h as f64 * 0.3) as u32,
                (w as f64 * 0.6) as u32,
                (h as f64 * 0.65) as u32,
            );
            let (mean_before, var_before) = stats(&original, inside);
            let (mean_after, var_after) = stats(&rendered, inside);
            assert!(var_before > 50.0, "the test area has detail: {var_before}");
            assert!(
                var_after < var_before * 0.2,
                "local variance {var_before:.1} -> {var_after:.1}: not blurred"
            );
            assert!(
                (mean_before - mean_after).abs() < 8.0,
                "mean {mean_before:.1} -> {mean_after:.1}"
            );

            // Outside the mask, away from the drawn box, label and zone: untouched.
            let annotated = |x: u32, y: u32| {
                let (fx, fy) = (x as f64 / w as f64, y as f64 / h as f64);
                let near_box = fx > 0.73 && fy < 0.33;
                let near_zone = fx < 0.22 && fy > 0.78;
                near_box || near_zone
            };
            let in_mask = |x: u32, y: u32| {
                let (fx, fy) = ((x as f64 + 0.5) / w as f64, (y as f64 + 0.5) / h as f64);
                (0.25..=0.65).contains(&fx) && (0.25..=0.7).contains(&fy)
            };
            let mut changed = 0;
            for (x, y, p) in original.enumerate_pixels() {
                if !in_mask(x, y) && !annotated(x, y) && rendered.get_pixel(x, y) != p {
                    changed += 1;
                }
            }
            assert_eq!(changed, 0, "pixels outside the mask changed");
            // The box is drawn.
            let corner = rendered.get_pixel((w as f32 * 0.85) as u32, detection.bbox.y2 as u32);
            assert_eq!(*corner, BOX_COLOUR);
        }
    }

    #[test]
    fn a_snapshot_is_written_atomically_with_its_hash_and_url() {
        let dir = tempfile::tempdir().unwrap();
        let config = EvidenceSettings {
            dir: Some(dir.path().display().to_string()),
            url_base: Some("https://skynet.example/evidence".into()),
            ..EvidenceSettings::default()
        }
        .validate(&ConfigContext::new(Path::new("x.toml")))
        .unwrap();
        let store = EvidenceStore::new(&config);
        let image = RgbImage::from_pixel(32, 24, Rgb([10, 200, 30]));
        let jpeg = store.encode(&image).unwrap();
        let stored = store.write("inc-1", 3, &jpeg).unwrap();
        assert_eq!(stored.path, dir.path().join("inc-1/3.jpg"));
        assert_eq!(stored.url, "https://skynet.example/evidence/inc-1/3.jpg");
        assert_eq!(
            stored.sha256,
            sha256_hex(&std::fs::read(&stored.path).unwrap())
        );
        assert_eq!(stored.sha256.len(), 64);
        // Only the file: no temporary left behind.
        assert_eq!(
            std::fs::read_dir(dir.path().join("inc-1")).unwrap().count(),
            1
        );
        assert!(matches!(
            store.write("../up", 1, &jpeg),
            Err(EvidenceError::BadIncidentId(_))
        ));
        // The default url is the directory's.
        let local = EvidenceSettings {
            dir: Some(dir.path().display().to_string()),
            ..EvidenceSettings::default()
        }
        .validate(&ConfigContext::new(Path::new("x.toml")))
        .unwrap();
        assert!(local.url_base.starts_with("file:///") && local.url_base.ends_with('/'));

        // Retention: a young file stays, everything goes with no retention at all.
        assert_eq!(sweep(dir.path(), Duration::from_secs(3600)).unwrap(), 0);
        assert_eq!(sweep(dir.path(), Duration::ZERO).unwrap(), 1);
        assert!(!dir.path().join("inc-1").exists());
        assert_eq!(sweep(&dir.path().join("none"), Duration::ZERO).unwrap(), 0);
    }

    #[test]
    fn bad_settings_name_their_key() {
        let cx = ConfigContext::new(Path::new("x.toml"));
        let bad = |s: EvidenceSettings| s.validate(&cx).unwrap_err().field;
        assert_eq!(
            bad(EvidenceSettings {
                jpeg_quality: 0,
                ..EvidenceSettings::default()
            }),
            "jpeg_quality"
        );
        assert_eq!(
            bad(EvidenceSettings {
                retain_days: -1.0,
                ..EvidenceSettings::default()
            }),
            "retain_days"
        );
        assert_eq!(
            bad(EvidenceSettings {
                url_base: Some("not a url".into()),
                ..EvidenceSettings::default()
            }),
            "url_base"
        );
    }
}
