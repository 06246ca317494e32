//! Detection workers: each serves every camera's queue, fairly, and numbers what it takes.
//!
//! Taking a frame and numbering it happen under the camera's lock, so each camera's frames
//! get dense, gap-free dispatch numbers in queue order. The rules stage restores that order
//! after parallel inference and never has to guess whether a frame is missing: every taken
//! frame yields exactly one [`Detected`], even when detection fails. Frames dropped before
//! they were taken (overload) show up as an explicit `gap` in source sequence numbers.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use crossbeam_channel::{Select, TryRecvError};
use skynet_core::{AnalysedFrame, CameraId, Frame, FrameImage, StageQueue, StageReceiver};
use skynet_detect::{Detector, ImageView};
use skynet_ingest::ObjectsInView;

use super::{Counters, POLL, panic_message};

/// One frame's way out of detection.
#[derive(Debug)]
pub(crate) struct Detected {
    pub camera: CameraId,
    /// Dense per camera, in the order frames left the camera's queue.
    pub dispatch: u64,
    /// Frames of this camera's source missing just before this one (dropped under overload).
    pub gap: u64,
    /// `None` when detection failed for this frame (counted, and skipped by the rules).
    pub frame: Option<AnalysedFrame>,
    /// The analysed pixels, for evidence snapshots: only when the camera takes snapshots
    /// and the frame has detections (a frame without any brings no incident new ones).
    pub image: Option<Arc<FrameImage>>,
}

#[derive(Debug, Default)]
struct Dispatch {
    next: u64,
    /// The last frame taken: its number and the source's count of skipped frames then.
    last: Option<(u64, u64)>,
}

/// A camera's frame queue, its dispatch numbering, and its metric handles, resolved once.
#[derive(Clone)]
pub(crate) struct CameraInput {
    camera: CameraId,
    frames: StageReceiver<Frame>,
    dispatch: Arc<Mutex<Dispatch>>,
    /// Tells the camera's motion gate whether the last detection found anything.
    objects: ObjectsInView,
    analysed: metrics::Counter,
    errors: metrics::Counter,
    /// Pass the pixels of frames with detections on, for evidence snapshots.
    keep_images: bool,
}

impl CameraInput {
    pub(crate) fn new(
        camera: &CameraId,
        frames: StageReceiver<Frame>,
        objects: ObjectsInView,
    ) -> Self {
        let label = camera.to_string();
        Self {
            camera: camera.clone(),
            frames,
            dispatch: Arc::default(),
            objects,
            analysed: metrics::counter!("skynet_frames_analysed_total", "camera" => label.clone()),
            errors: metrics::counter!("skynet_detect_errors_total", "camera" => label),
            keep_images: false,
        }
    }

    /// Passes the pixels of frames with detections on to the rules stage.
    pub(crate) fn keeping_images(mut self, keep: bool) -> Self {
        self.keep_images = keep;
        self
    }

    /// Takes the next frame and numbers it, atomically with respect to the other workers.
    fn take(&self) -> Result<Option<(Frame, u64, u64)>, TryRecvError> {
        let mut d = self.dispatch.lock().unwrap_or_else(PoisonError::into_inner);
        let frame = match self.frames.channel().try_recv() {
            Ok(frame) => frame,
            Err(TryRecvError::Empty) => return Ok(None),
            Err(e) => return Err(e),
        };
        self.frames.took();
        let (seq, skipped) = (frame.info.seq, frame.info.skipped);
        // Frames the motion gate skipped on purpose are not missing.
        let gap = match d.last {
            Some((last, skipped_then)) => seq
                .saturating_sub(last.saturating_add(1))
                .saturating_sub(skipped.saturating_sub(skipped_then)),
            None => seq.saturating_sub(skipped),
        };
        d.last = Some((seq, skipped));
        let index = d.next;
        d.next += 1;
        Ok(Some((frame, index, gap)))
    }
}

pub(crate) struct Worker {
    pub name: String,
    pub detector: Box<dyn Detector>,
    pub inputs: Vec<CameraInput>,
    pub out: StageQueue<Detected>,
    pub counters: Arc<Counters>,
}

impl Worker {
    pub(crate) fn run(mut self) {
        while !self.inputs.is_empty() {
            let mut select = Select::new();
            for input in &self.inputs {
                select.recv(input.frames.channel());
            }
            let Ok(index) = select.ready_timeout(POLL) else {
                continue;
            };
            let (frame, dispatch, gap) = match self.inputs[index].take() {
                Ok(Some(taken)) => taken,
                // Another worker was quicker.
                Ok(None) => continue,
                Err(_) => {
                    // That camera's source has ended and its queue is empty.
                    self.inputs.swap_remove(index);
                    continue;
                }
            };
            let input = &self.inputs[index];
            let span =
                tracing::debug_span!("detect", camera = %frame.info.camera, seq = frame.info.seq);
            let _entered = span.enter();
            let started = std::time::Instant::now();
            let detector = &mut self.detector;
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                ImageView::of_frame(&frame).and_then(|image| detector.detect(&image))
            }));
            let mut image = None;
            let (analysed, panicked) = match outcome {
                Ok(Ok(mut detections)) => {
                    input.objects.set(!detections.is_empty());
                    // Boxes in the camera's own pixels, whatever size the detector saw.
                    let (sx, sy) = frame.image_scale();
                    if (sx, sy) != (1.0, 1.0) {
                        for d in &mut detections {
                            d.bbox = d.bbox.scaled(sx, sy);
                        }
                    }
                    if input.keep_images && !detections.is_empty() {
                        image = owned_copy(&frame.image).map(Arc::new);
                    }
                    self.counters.analysed.fetch_add(1, Ordering::Relaxed);
                    input.analysed.increment(1);
                    let analysed = AnalysedFrame {
                        info: frame.info.clone(),
                        detections,
                        inference: started.elapsed(),
                        inferred: true,
                        tracks: Vec::new(),
                    };
                    (Some(analysed), None)
                }
                Ok(Err(e)) => {
                    input.errors.increment(1);
                    tracing::warn!(camera = %frame.info.camera, seq = frame.info.seq, error = %e, "frame skipped");
                    (None, None)
                }
                Err(panic) => (None, Some(panic)),
            };
            let detected = Detected {
                camera: input.camera.clone(),
                dispatch,
                gap,
                frame: analysed,
                image,
            };
            // The rules stage waits for every dispatch number: send even a failed frame.
            if self.out.send(detected).is_err() {
                return;
            }
            if let Some(panic) = panicked {
                // The session may be in any state now: this worker stops, and since detection
                // is a stage whose loss loses data, the pipeline drains and exits non-zero.
                tracing::error!(worker = %self.name, cause = %panic_message(panic.as_ref()), "the detector panicked");
                std::panic::resume_unwind(panic);
            }
        }
    }
}

/// The pixels in a buffer of their own, rows packed. A copy (a few hundred kilobytes at the
/// model's input size, only for frames with detections) rather than a clone of the frame:
/// the clone would keep the decoder's buffer mapped for as long as the rules stage holds the
/// camera's latest image, and a decoder's buffer pool may be small.
fn owned_copy(image: &FrameImage) -> Option<FrameImage> {
    let row = image.width as usize * 3;
    let height = image.height as usize;
    let mut data = Vec::with_capacity(row * height);
    for y in 0..height {
        let start = y * image.stride;
        data.extend_from_slice(image.data.get(start..start + row)?);
    }
    Some(FrameImage {
        width: image.width,
        height: image.height,
        stride: row,
        order: image.order,
        data: data.into(),
    })
}
