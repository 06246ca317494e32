//! The detector on every model family and on batches, with the variants of YOLOX-Nano that
//! scripts/derive_models.py makes (scripts/setup.sh generates them), and its execution
//! provider fallback.

mod common;

use std::sync::Arc;

use skynet_core::{Detection, PixelOrder};
use skynet_detect::detector::load_image;
use skynet_detect::{
    Detector, DetectorOptions, ExecutionProvider, ImageView, ModelManifest, OnnxDetector,
};

fn manifest(name: &str) -> Arc<ModelManifest> {
    let path = common::repo().join(format!("models/{name}.toml"));
    Arc::new(ModelManifest::load(&path).unwrap())
}

fn detector(name: &str, options: DetectorOptions) -> OnnxDetector {
    let options = DetectorOptions {
        weight_dirs: common::weight_dirs(),
        ..options
    };
    OnnxDetector::new(&common::runtime(), manifest(name), options)
        .unwrap_or_else(|e| panic!("{e}\n(derived models come from scripts/setup.sh)"))
}

struct Rgb {
    width: u32,
    height: u32,
    stride: usize,
    data: Vec<u8>,
}

impl Rgb {
    fn view(&self) -> ImageView<'_> {
        ImageView::new(
            self.width,
            self.height,
            self.stride,
            PixelOrder::Rgb,
            &self.data,
        )
        .unwrap()
    }
}

fn dog() -> Rgb {
    let (width, height, data) = load_image(&common::media("dog.jpg")).unwrap();
    Rgb {
        width,
        height,
        stride: width as usize * 3,
        data,
    }
}

/// Four different images: dog.jpg, mirrored, a crop, and a crop in rows padded to a wider
/// stride (as decoders hand frames over).
fn four_images() -> Vec<Rgb> {
    let dog = dog();
    let (w, h) = (dog.width as usize, dog.height as usize);
    let mirrored: Vec<u8> = dog
        .data
        .chunks_exact(w * 3)
        .flat_map(|row| {
            row.chunks_exact(3)
                .rev()
                .flatten()
                .copied()
                .collect::<Vec<_>>()
        })
        .collect();
    let crop = |x0: usize, y0: usize, cw: usize, ch: usize, pad: usize| {
        let stride = cw * 3 + pad;
        let mut data = vec![0u8; stride * ch];
        for y in 0..ch {
            let src = &dog.data[(y0 + y) * w * 3 + x0 * 3..][..cw * 3];
            data[y * stride..y * stride + cw * 3].copy_from_slice(src);
        }
        Rgb {
            width: cw as u32,
            height: ch as u32,
            stride,
            data,
        }
    };
    vec![
        crop(0, 0, w, h, 0),
        Rgb {
            width: dog.width,
            height: dog.height,
            stride: w * 3,
            data: mirrored,
        },
        crop(w / 2, 0, w - w / 2, h * 2 / 3, 0),
        crop(40, h / 4, w / 2, h / 2, 7),
    ]
}

fn assert_same(a: &[Detection], b: &[Detection], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: {a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        let close = |p: f32, q: f32, tol: f32| (p - q).abs() <= tol;
        assert_eq!(x.label, y.label, "{what}");
        assert!(close(x.score, y.score, 1e-3), "{what}: {x:?} vs {y:?}");
        for (p, q) in [
            (x.bbox.x1, y.bbox.x1),
            (x.bbox.y1, y.bbox.y1),
            (x.bbox.x2, y.bbox.x2),
            (x.bbox.y2, y.bbox.y2),
        ] {
            assert!(close(p, q, 0.5), "{what}: {x:?} vs {y:?}");
        }
    }
}

#[test]
fn a_batch_of_four_gives_the_same_detections_as_four_single_calls() {
    let images = four_images();
    let views: Vec<ImageView<'_>> = images.iter().map(Rgb::view).collect();
    let mut single = detector("yolox_nano_dynamic", DetectorOptions::default());
    let one_by_one: Vec<Vec<Detection>> = views.iter().map(|v| single.detect(v).unwrap()).collect();
    assert!(
        one_by_one.iter().all(|d| !d.is_empty()),
        "every image has something: {one_by_one:?}"
    );
    assert_ne!(one_by_one[0], one_by_one[1], "the images differ");

    let mut batched = detector(
        "yolox_nano_dynamic",
        DetectorOptions {
            max_batch: 4,
            ..DetectorOptions::default()
        },
    );
    assert!(batched.has_dynamic_batch());
    assert_eq!(batched.max_batch(), 4);
    let together = batched.detect_batch(&views);
    assert_eq!(together.len(), 4);
    for (i, (got, want)) in together.into_iter().zip(&one_by_one).enumerate() {
        assert_same(&got.unwrap(), want, &format!("image {i}"));
    }
    // Five images with max_batch 4: a batch of 4 and one of 1, in order.
    let mut five = views.clone();
    five.push(views[0]);
    let results = batched.detect_batch(&five);
    assert_eq!(results.len(), 5);
    assert_same(results[4].as_ref().unwrap(), &one_by_one[0], "fifth image");
}

#[test]
fn a_fixed_batch_model_runs_one_image_per_call_whatever_max_batch_says() {
    let mut d = detector(
        "yolox_nano",
        DetectorOptions {
            max_batch: 4,
            ..DetectorOptions::default()
        },
    );
    assert!(!d.has_dynamic_batch());
    assert_eq!(d.max_batch(), 1);
    let images = four_images();
    let views: Vec<ImageView<'_>> = images.iter().map(Rgb::view).collect();
    let results = d.detect_batch(&views[..2]);
    assert_eq!(results.len(), 2);
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().is_ok_and(|d| !d.is_empty()))
    );
}

/// Each family finds what the Python reference finds for YOLOX on dog.jpg.
fn finds_the_reference_objects(model: &str) {
    let mut d = detector(model, DetectorOptions::default());
    let image = dog();
    let got = d.detect(&image.view()).unwrap();
    for want in common::dog_reference() {
        if ["dog", "bicycle", "car"].contains(&want.label.as_str()) {
            common::assert_matches_reference(&got, &want, model);
        }
    }
}

#[test]
fn the_yolov8_layout_finds_the_dog_bicycle_and_car() {
    finds_the_reference_objects("yolox_nano_v8");
}

#[test]
fn the_nms_inside_export_finds_the_dog_bicycle_and_car() {
    finds_the_reference_objects("yolox_nano_nms");
}

/// An empty scene is a result, not a failure, in every family: an end-to-end export that
/// finds nothing gives an output with no rows, and each image of the call still gets its
/// (empty) list.
#[test]
fn an_empty_scene_gives_no_detections_not_an_error_in_every_family() {
    let grey = Rgb {
        width: 320,
        height: 240,
        stride: 320 * 3,
        data: vec![114; 320 * 240 * 3],
    };
    for model in ["yolox_nano", "yolox_nano_v8", "yolox_nano_nms"] {
        let mut d = detector(model, DetectorOptions::default());
        let results = d.detect_batch(&[grey.view()]);
        assert_eq!(results.len(), 1, "{model}");
        let found = results.into_iter().next().unwrap();
        assert_eq!(
            found.unwrap_or_else(|e| panic!("{model}: {e}")),
            vec![],
            "{model}"
        );
    }
}

/// On this CPU-only ONNX Runtime, CUDA fails to register; the detector says so and loads
/// on the CPU, and the gauge names the provider in effect.
#[test]
fn asking_for_cuda_then_cpu_falls_back_to_cpu_and_says_so() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let d = metrics::with_local_recorder(&recorder, || {
        detector(
            "yolox_nano",
            DetectorOptions {
                execution_providers: vec![ExecutionProvider::Cuda, ExecutionProvider::Cpu],
                ..DetectorOptions::default()
            },
        )
    });
    let has_cuda = common::runtime()
        .library
        .display()
        .to_string()
        .contains("gpu");
    if !has_cuda {
        assert_eq!(d.execution_provider(), ExecutionProvider::Cpu);
    }
    let rendered = handle.render();
    let line = format!(
        "skynet_execution_provider{{model=\"yolox_nano\",provider=\"{}\"}} 1",
        d.execution_provider()
    );
    assert!(rendered.contains(&line), "{line} not in:\n{rendered}");

    // Only CUDA: nothing to fall back to, and the error says why.
    let err = OnnxDetector::new(
        &common::runtime(),
        manifest("yolox_nano"),
        DetectorOptions {
            execution_providers: vec![ExecutionProvider::Cuda],
            weight_dirs: common::weight_dirs(),
            ..DetectorOptions::default()
        },
    );
    if !has_cuda {
        let err = err.err().expect("CUDA on a CPU-only runtime").to_string();
        assert!(err.contains("cuda:"), "{err}");
    }
}

#[test]
fn inference_latency_and_batch_size_are_recorded_per_model() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let mut d = metrics::with_local_recorder(&recorder, || {
        detector(
            "yolox_nano_dynamic",
            DetectorOptions {
                max_batch: 2,
                ..DetectorOptions::default()
            },
        )
    });
    let image = dog();
    d.detect_batch(&[image.view(), image.view()]);
    let rendered = handle.render();
    for needle in [
        "skynet_inference_seconds_count{model=\"yolox_nano_dynamic\"} 1",
        "skynet_inference_batch_size_sum{model=\"yolox_nano_dynamic\"} 2",
    ] {
        assert!(rendered.contains(needle), "{needle} not in:\n{rendered}");
    }
}
