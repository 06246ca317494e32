//! Letterboxing a packed 8-bit image into a model's planar float input.
//!
//! The image keeps its aspect ratio, sits at the top-left corner and the rest is padding;
//! resampling is bilinear with pixel centres aligned as OpenCV's `INTER_LINEAR` does, so
//! results match the reference implementation the models were validated with.
//!
//! [`Letterbox::fill`] resizes with `fast_image_resize` (SIMD, two-tap bilinear
//! interpolation like OpenCV, 8-bit result like `cv2.resize`) straight from the frame's
//! rows into one reused buffer, then writes the planar floats and only the padding around
//! them. [`Letterbox::fill_exact`] is the scalar float path it replaced, kept as the
//! reference for tests and the timing comparison.

use fast_image_resize as fir;
use fir::pixels::U8x3;
use skynet_core::{Frame, PixelOrder};

use crate::DetectError;
use crate::manifest::ChannelOrder;

/// A borrowed packed 8-bit, 3-channel image.
#[derive(Debug, Clone, Copy)]
pub struct ImageView<'a> {
    pub width: u32,
    pub height: u32,
    pub stride: usize,
    pub order: PixelOrder,
    pub data: &'a [u8],
}

impl<'a> ImageView<'a> {
    pub fn new(
        width: u32,
        height: u32,
        stride: usize,
        order: PixelOrder,
        data: &'a [u8],
    ) -> Result<Self, DetectError> {
        let needed = if height == 0 {
            0
        } else {
            stride * (height as usize - 1) + width as usize * 3
        };
        if width == 0 || height == 0 || stride < width as usize * 3 || data.len() < needed {
            return Err(DetectError::ImageSize {
                width,
                height,
                stride,
                needed,
                got: data.len(),
            });
        }
        Ok(Self {
            width,
            height,
            stride,
            order,
            data,
        })
    }

    /// The frame's image (possibly scaled down from the camera's resolution: see
    /// [`Frame::image_scale`]).
    pub fn of_frame(frame: &'a Frame) -> Result<Self, DetectError> {
        let image = &frame.image;
        Self::new(
            image.width,
            image.height,
            image.stride,
            image.order,
            &image.data,
        )
    }
}

/// How the source image maps into the model input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LetterboxGeometry {
    /// Model pixels per source pixel.
    pub scale: f32,
    pub resized_width: u32,
    pub resized_height: u32,
}

/// One resampling tap pair along an axis.
#[derive(Debug, Clone, Copy)]
struct Tap {
    index: usize,
    next: usize,
    weight_next: f32,
}

/// Resampling taps for one source size.
#[derive(Debug)]
struct Resampling {
    source: (u32, u32),
    geometry: LetterboxGeometry,
    x: Vec<Tap>,
    y: Vec<Tap>,
}

/// Reusable letterboxer for one model input size; caches the geometry (and, for the exact
/// path, the resampling taps) per source size.
pub struct Letterbox {
    width: u32,
    height: u32,
    pad_value: f32,
    scale_values: f32,
    channel_order: ChannelOrder,
    resizer: fir::Resizer,
    resize_options: fir::ResizeOptions,
    /// The resized image, packed 8-bit, reused across frames.
    resized: Vec<u8>,
    cached: Option<Resampling>,
    row_a: Vec<f32>,
    row_b: Vec<f32>,
}

impl std::fmt::Debug for Letterbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Letterbox")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("channel_order", &self.channel_order)
            .finish_non_exhaustive()
    }
}

/// A frame's packed rows as `fast_image_resize` reads them, without copying: rows may be
/// padded (stride wider than the pixels).
struct StridedRows<'a> {
    image: &'a ImageView<'a>,
}

// SAFETY: every row `iter_rows` yields is exactly `width` pixels long: `ImageView::new`
// checked the buffer holds `stride * (height - 1) + width * 3` bytes.
unsafe impl fir::ImageView for StridedRows<'_> {
    type Pixel = U8x3;

    fn width(&self) -> u32 {
        self.image.width
    }

    fn height(&self) -> u32 {
        self.image.height
    }

    fn iter_rows(&self, start_row: u32) -> impl Iterator<Item = &[U8x3]> {
        let (stride, row_bytes) = (self.image.stride, self.image.width as usize * 3);
        (start_row..self.image.height).map(move |y| {
            let start = y as usize * stride;
            bytemuck::cast_slice(&self.image.data[start..start + row_bytes])
        })
    }
}

impl Letterbox {
    pub fn new(
        width: u32,
        height: u32,
        pad_value: f32,
        scale_values: f32,
        channel_order: ChannelOrder,
    ) -> Self {
        Self {
            width,
            height,
            pad_value,
            scale_values,
            channel_order,
            resizer: fir::Resizer::new(),
            resize_options: fir::ResizeOptions::new()
                .resize_alg(fir::ResizeAlg::Interpolation(fir::FilterType::Bilinear)),
            resized: Vec::new(),
            cached: None,
            row_a: Vec::new(),
            row_b: Vec::new(),
        }
    }

    /// Writes `image` letterboxed into `out` (planar, `3 x height x width`).
    pub fn fill(&mut self, image: &ImageView<'_>, out: &mut [f32]) -> LetterboxGeometry {
        assert_eq!(out.len(), self.tensor_len(), "tensor buffer size");
        let geometry = Self::geometry(self.width, self.height, image.width, image.height);
        let (rw, rh) = (
            geometry.resized_width as usize,
            geometry.resized_height as usize,
        );
        self.resized.resize(rw * rh * 3, 0);
        let resized_ok = match fir::images::TypedImage::<U8x3>::from_buffer(
            geometry.resized_width,
            geometry.resized_height,
            &mut self.resized,
        ) {
            Ok(mut dst) => self
                .resizer
                .resize_typed(&StridedRows { image }, &mut dst, &self.resize_options)
                .is_ok(),
            Err(_) => false,
        };
        if !resized_ok {
            // Sizes are checked above; should the library still refuse, the exact path
            // gives the same picture.
            return self.fill_exact(image, out);
        }

        let (w, h) = (self.width as usize, self.height as usize);
        let plane = w * h;
        let pad = self.pad_value * self.scale_values;
        let sc = self.source_channels(image);
        let scale = self.scale_values;
        for (c, &src_c) in sc.iter().enumerate() {
            let plane_out = &mut out[c * plane..(c + 1) * plane];
            for (y, row) in self.resized.chunks_exact(rw * 3).enumerate() {
                let line = &mut plane_out[y * w..(y + 1) * w];
                let (pixels, right_pad) = line.split_at_mut(rw);
                for (d, px) in pixels.iter_mut().zip(row.chunks_exact(3)) {
                    *d = f32::from(px[src_c]) * scale;
                }
                right_pad.fill(pad);
            }
            plane_out[rh * w..].fill(pad);
        }
        geometry
    }

    /// Output channel c reads source channel `[c]`.
    fn source_channels(&self, image: &ImageView<'_>) -> [usize; 3] {
        let want_bgr = self.channel_order == ChannelOrder::Bgr;
        let src_is_bgr = image.order == PixelOrder::Bgr;
        if want_bgr == src_is_bgr {
            [0, 1, 2]
        } else {
            [2, 1, 0]
        }
    }

    /// The number of floats [`fill`](Self::fill) writes.
    pub fn tensor_len(&self) -> usize {
        3 * self.width as usize * self.height as usize
    }

    pub fn geometry(width: u32, height: u32, src_width: u32, src_height: u32) -> LetterboxGeometry {
        let scale = (width as f32 / src_width as f32).min(height as f32 / src_height as f32);
        LetterboxGeometry {
            scale,
            // Truncation, not rounding: the reference implementation does the same.
            resized_width: ((src_width as f32 * scale) as u32).clamp(1, width),
            resized_height: ((src_height as f32 * scale) as u32).clamp(1, height),
        }
    }

    /// [`fill`](Self::fill) by the scalar float path (no rounding to 8 bits between the
    /// passes): the reference the SIMD path is compared with.
    pub fn fill_exact(&mut self, image: &ImageView<'_>, out: &mut [f32]) -> LetterboxGeometry {
        assert_eq!(out.len(), self.tensor_len(), "tensor buffer size");
        let source = (image.width, image.height);
        let resampling = match self.cached.take() {
            Some(r) if r.source == source => r,
            _ => {
                let geometry = Self::geometry(self.width, self.height, image.width, image.height);
                let x = axis_taps(image.width as usize, geometry.resized_width as usize);
                let y = axis_taps(image.height as usize, geometry.resized_height as usize);
                Resampling {
                    source,
                    geometry,
                    x,
                    y,
                }
            }
        };
        let (geometry, x_taps, y_taps) = (resampling.geometry, &resampling.x, &resampling.y);
        let (w, h) = (self.width as usize, self.height as usize);
        let (rw, rh) = (
            geometry.resized_width as usize,
            geometry.resized_height as usize,
        );
        let plane = w * h;
        let pad = self.pad_value * self.scale_values;
        out.fill(pad);

        let src_channel = self.source_channels(image);

        self.row_a.resize(rw * 3, 0.0);
        self.row_b.resize(rw * 3, 0.0);
        // The horizontal pass of a source row is reused while consecutive output rows need it.
        let (mut in_a, mut in_b) = (usize::MAX, usize::MAX);
        for (y, tap) in y_taps.iter().enumerate().take(rh) {
            if in_a != tap.index {
                if in_b == tap.index {
                    std::mem::swap(&mut self.row_a, &mut self.row_b);
                    std::mem::swap(&mut in_a, &mut in_b);
                } else {
                    resample_row(image, tap.index, x_taps, &mut self.row_a);
                    in_a = tap.index;
                }
            }
            if in_b != tap.next {
                resample_row(image, tap.next, x_taps, &mut self.row_b);
                in_b = tap.next;
            }

            let wy = tap.weight_next;
            for (c, &sc) in src_channel.iter().enumerate() {
                let dst = &mut out[c * plane + y * w..c * plane + y * w + rw];
                for (x, d) in dst.iter_mut().enumerate() {
                    let a = self.row_a[x * 3 + sc];
                    let b = self.row_b[x * 3 + sc];
                    *d = (a + (b - a) * wy) * self.scale_values;
                }
            }
        }
        self.cached = Some(resampling);
        geometry
    }
}

/// Bilinear taps mapping `dst` samples onto `src`, with half-pixel centres.
fn axis_taps(src: usize, dst: usize) -> Vec<Tap> {
    let ratio = src as f32 / dst as f32;
    (0..dst)
        .map(|i| {
            let pos = ((i as f32 + 0.5) * ratio - 0.5).max(0.0);
            let index = (pos.floor() as usize).min(src - 1);
            let next = (index + 1).min(src - 1);
            Tap {
                index,
                next,
                weight_next: if next == index {
                    0.0
                } else {
                    pos - index as f32
                },
            }
        })
        .collect()
}

fn resample_row(image: &ImageView<'_>, row: usize, x_taps: &[Tap], out: &mut [f32]) {
    let src = &image.data[row * image.stride..row * image.stride + image.width as usize * 3];
    for (x, tap) in x_taps.iter().enumerate() {
        let a = &src[tap.index * 3..tap.index * 3 + 3];
        let b = &src[tap.next * 3..tap.next * 3 + 3];
        for c in 0..3 {
            let (fa, fb) = (f32::from(a[c]), f32::from(b[c]));
            out[x * 3 + c] = fa + (fb - fa) * tap.weight_next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letterbox_keeps_aspect_pads_bottom_and_swaps_channels() {
        // 4x2 RGB image, all pixels (10, 20, 30), into an 8x8 BGR input.
        let data = [10u8, 20, 30].repeat(8);
        let image = ImageView::new(4, 2, 12, PixelOrder::Rgb, &data).unwrap();
        let mut lb = Letterbox::new(8, 8, 114.0, 1.0, ChannelOrder::Bgr);
        let mut out = vec![0.0; lb.tensor_len()];
        let g = lb.fill(&image, &mut out);
        assert_eq!((g.resized_width, g.resized_height), (8, 4));
        assert_eq!(g.scale, 2.0);
        // Blue plane first, then green, then red; rows 4..8 are padding.
        assert_eq!(out[0], 30.0);
        assert_eq!(out[64], 20.0);
        assert_eq!(out[128], 10.0);
        assert_eq!(out[4 * 8], 114.0);
    }

    #[test]
    fn downscale_by_two_averages_neighbours() {
        // One row 0, 100, 0, 100 (grey), halved: each output pixel blends a pair.
        let data: Vec<u8> = [0u8, 100, 0, 100].iter().flat_map(|v| [*v; 3]).collect();
        let image = ImageView::new(4, 1, 12, PixelOrder::Bgr, &data).unwrap();
        let mut lb = Letterbox::new(2, 2, 0.0, 1.0, ChannelOrder::Bgr);
        let mut out = vec![0.0; lb.tensor_len()];
        lb.fill(&image, &mut out);
        assert_eq!(&out[0..2], &[50.0, 50.0]);
    }

    #[test]
    fn simd_path_agrees_with_the_exact_path_and_reads_padded_rows() {
        // A 37x23 gradient with 5 bytes of row padding, into a 32x32 input.
        let (w, h, stride) = (37u32, 23u32, 37 * 3 + 5);
        let data: Vec<u8> = (0..stride * h as usize)
            .map(|i| ((i * 7 + i / stride * 13) % 256) as u8)
            .collect();
        let image = ImageView::new(w, h, stride, PixelOrder::Rgb, &data).unwrap();
        let mut lb = Letterbox::new(32, 32, 114.0, 1.0, ChannelOrder::Bgr);
        let (mut fast, mut exact) = (vec![0.0; lb.tensor_len()], vec![0.0; lb.tensor_len()]);
        let g1 = lb.fill(&image, &mut fast);
        let g2 = lb.fill_exact(&image, &mut exact);
        assert_eq!(g1, g2);
        // 8-bit rounding and fixed-point weights: within a couple of levels per pixel.
        let worst = fast
            .iter()
            .zip(&exact)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= 2.0, "largest difference {worst}");
        // The padding is written (the buffer may hold the previous frame).
        let mut dirty = vec![-1.0; lb.tensor_len()];
        lb.fill(&image, &mut dirty);
        assert_eq!(dirty, fast);
    }

    #[test]
    fn short_buffer_is_an_error() {
        assert!(ImageView::new(4, 4, 12, PixelOrder::Bgr, &[0; 10]).is_err());
    }
}
