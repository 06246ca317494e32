//! The annotated snapshot: a frame as RGB, privacy masks blurred, then zone outlines,
//! detection boxes and their labels drawn on it.
//!
//! Drawing is done here rather than with `imageproc`: boxes, outlines and a box blur are a
//! few dozen lines, while `imageproc` (even without default features) pulls `nalgebra`,
//! `rand` and `num` into the build, and its text drawing needs a TTF font we would have to
//! ship. Labels use the small bitmap font in [`crate::font`] instead.

use image::{Rgb, RgbImage};
use skynet_core::{Detection, FrameImage, PixelOrder};
use skynet_detect::Zone;

use crate::SnapshotError;
use crate::blur::blur_polygons;
use crate::font::{GLYPH_ADVANCE, GLYPH_HEIGHT, draw_text};

const BOX_COLOUR: Rgb<u8> = Rgb([230, 40, 40]);
const ZONE_COLOUR: Rgb<u8> = Rgb([255, 210, 0]);
const TEXT_COLOUR: Rgb<u8> = Rgb([255, 255, 255]);

/// A frame's pixels as an RGB image (the frame may be BGR, with padded rows).
pub fn to_rgb(image: &FrameImage) -> Result<RgbImage, SnapshotError> {
    let (w, h) = (image.width as usize, image.height as usize);
    let row = w * 3;
    let short = || SnapshotError::ShortImage {
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
pub fn render(image: &FrameImage, annotations: Annotations<'_>) -> Result<RgbImage, SnapshotError> {
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

pub(crate) fn put(img: &mut RgbImage, x: i64, y: i64, colour: Rgb<u8>) {
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

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
}
