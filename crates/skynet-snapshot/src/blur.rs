//! Privacy masks: polygons of a snapshot blurred beyond reading, every other pixel untouched.

use geo::{Contains, LineString, Point as GeoPoint, Polygon};
use image::{Rgb, RgbImage};

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
