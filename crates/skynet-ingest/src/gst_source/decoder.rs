//! Which decoder a camera gets: `uridecodebin`'s pick, with hardware decoders first in
//! `auto`, none in `software`, or a named element; and which one a connection really uses,
//! for the log and `skynet_camera_decoder`.

use std::sync::{Arc, Mutex, PoisonError};

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;

use super::GstSource;
use super::keyframes::{DecodeMode, KeyframeGate};
use crate::config::DecoderChoice;

/// The decoder a connection is using, as `deep-element-added` saw it.
#[derive(Debug, Clone, Default)]
pub(super) struct DecoderInUse(Arc<Mutex<Option<(String, bool)>>>);

impl DecoderInUse {
    fn set(&self, name: String, hardware: bool) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some((name, hardware));
    }

    pub(super) fn get(&self) -> Option<(String, bool)> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Element-name prefixes of hardware video decoders (NVIDIA, VA-API, V4L2 stateless, Intel
/// Media SDK / oneVPL, Direct3D, Apple), for factories whose class does not say "Hardware".
const HARDWARE_DECODER_PREFIXES: [&str; 9] = [
    "nv", "va", "vaapi", "v4l2sl", "v4l2", "msdk", "qsv", "d3d11", "vtdec",
];

/// A video decoder factory.
pub(super) fn is_video_decoder(factory: &gst::ElementFactory) -> bool {
    let klass = factory.metadata(gst::ELEMENT_METADATA_KLASS).unwrap_or("");
    klass.contains("Decoder") && klass.contains("Video")
}

/// A hardware video decoder factory.
pub(super) fn is_hardware_decoder(factory: &gst::ElementFactory) -> bool {
    let klass = factory.metadata(gst::ELEMENT_METADATA_KLASS).unwrap_or("");
    let name = factory.name();
    is_video_decoder(factory)
        && (klass.contains("Hardware")
            || HARDWARE_DECODER_PREFIXES
                .iter()
                .any(|p| name.starts_with(p) && !name.starts_with("vaapipostproc")))
}

/// Makes installed hardware decoders win `uridecodebin`'s choice in `auto` mode: some
/// register below the software decoders' rank. Once per process.
fn prefer_hardware_decoders() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let registry = gst::Registry::get();
        for feature in registry.features(gst::ElementFactory::static_type()) {
            let Ok(factory) = feature.clone().downcast::<gst::ElementFactory>() else {
                continue;
            };
            if is_hardware_decoder(&factory) && feature.rank() < gst::Rank::PRIMARY + 1 {
                feature.set_rank(gst::Rank::PRIMARY + 1);
                tracing::info!(decoder = %factory.name(), "hardware decoder available");
            }
        }
    });
}

/// `GST_AUTOPLUG_SELECT_TRY` or `_SKIP`, as the `autoplug-select` signal wants it.
fn autoplug_result(skip: bool) -> Option<glib::Value> {
    let class = glib::EnumClass::with_type(glib::Type::from_name("GstAutoplugSelectResult")?)?;
    class.to_value(if skip { 2 } else { 0 })
}

/// Steers `uridecodebin`'s choice of decoder to `choice`: in `auto`, hardware decoders win
/// where installed; `software` skips them; a named element is taken where it can decode the
/// stream.
pub(super) fn select_decoder(decode: &gst::Element, choice: DecoderChoice) {
    if choice == DecoderChoice::Auto {
        prefer_hardware_decoders();
    }
    decode.connect("autoplug-select", false, move |args| {
        let factory = args
            .get(3)
            .and_then(|v| v.get::<gst::ElementFactory>().ok());
        let caps = args.get(2).and_then(|v| v.get::<gst::Caps>().ok());
        let skip = match (&choice, factory) {
            (DecoderChoice::Software, Some(f)) => is_hardware_decoder(&f),
            (DecoderChoice::Element(name), Some(f)) if is_video_decoder(&f) => {
                // Another decoder only when the named one cannot take this stream.
                f.name() != name.as_str()
                    && gst::ElementFactory::find(name).is_some_and(|wanted| {
                        caps.as_ref().is_some_and(|c| wanted.can_sink_any_caps(c))
                    })
            }
            _ => false,
        };
        autoplug_result(skip)
    });
}

/// Records the video decoder the pipeline adds in `decoder_in_use`, gives a software
/// decoder at most `threads` threads (0: as many as it likes), and puts the key-frame gate
/// before it (`keyframes.rs`).
pub(super) fn watch_decoder(
    pipeline: &gst::Pipeline,
    decoder_in_use: &DecoderInUse,
    threads: u32,
    keyframes: Arc<KeyframeGate>,
) {
    let decoder_in_use = decoder_in_use.clone();
    pipeline.connect_deep_element_added(move |_, _, element| {
        if let Some(factory) = element.factory()
            && is_video_decoder(&factory)
        {
            // libav's decoders take a thread per core by default, each holding frames:
            // one camera among many needs neither.
            if threads > 0 && element.has_property_with_type("max-threads", i32::static_type()) {
                element.set_property("max-threads", i32::try_from(threads).unwrap_or(1));
            }
            keyframes.attach(element);
            decoder_in_use.set(factory.name().to_string(), is_hardware_decoder(&factory));
        }
    });
}

impl GstSource {
    /// The decoder choice for the next connection: software once a hardware decoder failed.
    pub(super) fn decoder_choice(&self) -> DecoderChoice {
        if self.force_software {
            DecoderChoice::Software
        } else {
            self.options.decoder.clone()
        }
    }

    /// Logs the decoder a connection picked, once per change, and sets its gauge
    /// `skynet_camera_decoder{camera,decoder,hardware}`.
    pub(super) fn report_decoder(&mut self, in_use: &DecoderInUse) {
        let Some(current) = in_use.get() else {
            return;
        };
        if self.reported_decoder.as_ref() == Some(&current) {
            return;
        }
        let camera = self.camera.to_string();
        if let Some((old, hardware)) = self.reported_decoder.take() {
            metrics::gauge!("skynet_camera_decoder", "camera" => camera.clone(), "decoder" => old, "hardware" => hardware.to_string()).set(0.0);
        }
        let (name, hardware) = current.clone();
        tracing::info!(camera = %self.camera, decoder = %name, hardware, "decoder chosen");
        metrics::gauge!("skynet_camera_decoder", "camera" => camera, "decoder" => name, "hardware" => hardware.to_string()).set(1.0);
        self.reported_decoder = Some(current);
    }

    /// Logs what reaches the decoder, once per change, and sets its gauge
    /// `skynet_camera_decode_mode{camera,mode}` (1 for the current mode, 0 for the other).
    pub(super) fn report_decode_mode(&mut self, gate: &KeyframeGate) {
        let mode = gate.mode();
        if self.reported_decode_mode == Some(mode) {
            return;
        }
        let camera = self.camera.to_string();
        for other in [DecodeMode::Full, DecodeMode::Keyframes] {
            metrics::gauge!("skynet_camera_decode_mode", "camera" => camera.clone(), "mode" => other.as_str())
                .set(if other == mode { 1.0 } else { 0.0 });
        }
        tracing::info!(camera = %self.camera, mode = mode.as_str(), "decode mode");
        self.reported_decode_mode = Some(mode);
    }
}
