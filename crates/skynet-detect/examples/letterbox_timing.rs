//! Letterbox time per frame, SIMD (`fast_image_resize`) against the exact scalar path, on
//! synthetic frames of vtest.avi's size (768x576) and 1080p into the 416x416 YOLOX input.
//!
//!     cargo run --release -p skynet-detect --example letterbox_timing

use std::time::Instant;

use skynet_core::PixelOrder;
use skynet_detect::ImageView;
use skynet_detect::manifest::ChannelOrder;
use skynet_detect::preprocess::Letterbox;

fn main() {
    for (w, h) in [(768u32, 576u32), (1920, 1080)] {
        let stride = w as usize * 3;
        let data: Vec<u8> = (0..stride * h as usize)
            .map(|i| ((i * 7 + i / stride * 13) % 251) as u8)
            .collect();
        let image = ImageView::new(w, h, stride, PixelOrder::Bgr, &data).expect("image");
        let mut lb = Letterbox::new(416, 416, 114.0, 1.0, ChannelOrder::Bgr);
        let mut out = vec![0.0f32; lb.tensor_len()];
        let mut reference = vec![0.0f32; lb.tensor_len()];
        let rounds = 300;
        let time = |f: &mut dyn FnMut()| {
            for _ in 0..20 {
                f();
            }
            let started = Instant::now();
            for _ in 0..rounds {
                f();
            }
            started.elapsed().as_secs_f64() / rounds as f64 * 1e3
        };
        let exact_ms = time(&mut || {
            lb.fill_exact(&image, &mut reference);
        });
        let simd_ms = time(&mut || {
            lb.fill(&image, &mut out);
        });
        let worst = out
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        println!(
            "{w}x{h} -> 416x416: exact {exact_ms:.3} ms, fast_image_resize {simd_ms:.3} ms ({:.2}x of exact); largest difference {worst} levels",
            simd_ms / exact_ms
        );
    }
}
