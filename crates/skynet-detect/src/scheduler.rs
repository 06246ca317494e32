//! The inference scheduler: detection workers, each serving every camera's queue, fairly, and
//! numbering what it takes.
//!
//! A worker whose detector takes batches (a model with a dynamic batch axis, `max_batch`)
//! fills each batch from the cameras in turn, one frame per camera per sweep, waiting at most
//! `max_wait_ms` for it to fill. Each camera's inference interval decides which of its frames
//! the detector sees; the others go straight on to the tracker.
//!
//! Taking a frame and numbering it happen under the camera's lock, so each camera's frames
//! get dense, gap-free dispatch numbers in queue order. The rules stage restores that order
//! after parallel inference and never has to guess whether a frame is missing: every taken
//! frame yields exactly one [`Detected`], even when detection fails. Frames dropped before
//! they were taken (overload) show up as an explicit `gap` in source sequence numbers.

use std::any::Any;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Select, TryRecvError};
use skynet_core::{
    AnalysedFrame, Detection, DeviceId, Frame, FrameImage, ObjectsInView, StageQueue, StageReceiver,
};

use crate::{DetectError, DetectionFilter, Detector, ImageView, InferenceInterval, IntervalConfig};

/// How long a worker waits for a frame before looking again.
const POLL: Duration = Duration::from_millis(100);

/// How often a camera's pixels go on for the console's tile, whatever is in view: the
/// tile's period, which the console uses too.
pub const PREVIEW_EVERY: Duration = Duration::from_secs(1);

/// The pipeline's totals of analysed and inferred frames (the run summary's), counted by the
/// workers beside the per-camera metrics.
pub trait FrameCounts: Send + Sync {
    /// A frame went on to the tracker and rules, inferred or not.
    fn analysed(&self);
    /// The detector ran on a frame.
    fn inferred(&self);
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panicked".into())
}

/// One frame's way out of detection.
#[derive(Debug)]
pub struct Detected {
    pub camera: DeviceId,
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

#[derive(Debug)]
struct Dispatch {
    next: u64,
    /// The last frame taken: its number and the source's count of skipped frames then.
    last: Option<(u64, u64)>,
    /// Which frames go to the detector (the rest only to the tracker).
    interval: InferenceInterval,
}

/// A frame taken from a camera's queue, numbered.
struct Taken {
    input: usize,
    frame: Frame,
    dispatch: u64,
    gap: u64,
    /// Whether the detector runs on it (the inference interval).
    infer: bool,
}

/// A camera's frame queue, its dispatch numbering, and its metric handles, resolved once.
#[derive(Clone)]
pub struct CameraInput {
    camera: DeviceId,
    frames: StageReceiver<Frame>,
    dispatch: Arc<Mutex<Dispatch>>,
    /// Tells the camera's motion gate whether the last detection found anything.
    objects: ObjectsInView,
    /// The classes the camera's owner looks for, and their limits.
    filter: Arc<DetectionFilter>,
    analysed: metrics::Counter,
    inferred: metrics::Counter,
    errors: metrics::Counter,
    queue_wait: metrics::Histogram,
    /// Pass the pixels of frames with detections on, for evidence snapshots.
    keep_images: bool,
    /// When a frame's pixels last went on for the console's camera tile (milliseconds since
    /// `previews_since`); `None` without a console.
    preview: Option<Arc<std::sync::atomic::AtomicU64>>,
}

/// The clock of the console's tiles.
fn previews_since() -> std::time::Instant {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *START.get_or_init(std::time::Instant::now)
}

/// [`PREVIEW_EVERY`] in the tile clock's unit.
const PREVIEW_EVERY_MS: u64 = PREVIEW_EVERY.as_millis() as u64;

impl CameraInput {
    pub fn new(
        camera: &DeviceId,
        frames: StageReceiver<Frame>,
        objects: ObjectsInView,
        filter: DetectionFilter,
        interval: IntervalConfig,
    ) -> Self {
        let label = camera.to_string();
        Self {
            camera: camera.clone(),
            frames,
            dispatch: Arc::new(Mutex::new(Dispatch {
                next: 0,
                last: None,
                interval: InferenceInterval::new(interval),
            })),
            objects,
            filter: Arc::new(filter),
            analysed: metrics::counter!("skynet_frames_analysed_total", "camera" => label.clone()),
            inferred: metrics::counter!("skynet_frames_inferred_total", "camera" => label.clone()),
            errors: metrics::counter!("skynet_detect_errors_total", "camera" => label.clone()),
            queue_wait: metrics::histogram!("skynet_inference_queue_wait_seconds", "camera" => label),
            keep_images: false,
            preview: None,
        }
    }

    /// The camera's detection filter, shared with every worker: a config reload changes its
    /// limits in place.
    pub fn filter(&self) -> Arc<DetectionFilter> {
        Arc::clone(&self.filter)
    }

    /// Also passes a frame's pixels on about once a second for the console's camera tile,
    /// with or without detections (an empty scene is what the wall should show then).
    pub fn with_preview(mut self) -> Self {
        self.preview = Some(Arc::new(std::sync::atomic::AtomicU64::new(0)));
        self
    }

    /// Whether this frame's pixels are due for the tile (at most one frame a second).
    fn preview_due(&self) -> bool {
        use std::sync::atomic::Ordering;
        let Some(last) = &self.preview else {
            return false;
        };
        let now = previews_since().elapsed().as_millis() as u64 + PREVIEW_EVERY_MS;
        let before = last.load(Ordering::Relaxed);
        now.saturating_sub(before) >= PREVIEW_EVERY_MS
            && last
                .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Passes the pixels of frames with detections on to the rules stage.
    pub fn keeping_images(mut self, keep: bool) -> Self {
        self.keep_images = keep;
        self
    }

    /// Takes the next frame and numbers it, atomically with respect to the other workers.
    fn take(&self, input: usize) -> Result<Option<Taken>, TryRecvError> {
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
        let dispatch = d.next;
        d.next += 1;
        let infer = d.interval.infer_now();
        Ok(Some(Taken {
            input,
            frame,
            dispatch,
            gap,
            infer,
        }))
    }

    /// Learns what the detector found, for the next interval.
    fn observe(&self, detections: &[Detection]) {
        self.dispatch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .interval
            .observe(detections);
    }
}

/// One detection worker; `C` counts the pipeline's totals.
pub struct InferenceWorker<C: FrameCounts> {
    pub name: String,
    pub detector: Box<dyn Detector>,
    pub inputs: Vec<CameraInput>,
    pub out: StageQueue<Detected>,
    pub counters: Arc<C>,
    /// How long a batch waits to fill once its first frame is taken.
    pub max_wait: Duration,
    /// Cameras added while running (a platform channel placed by its catalog position):
    /// taken between batches. While it is open the worker waits for them, even with no
    /// camera yet; once it is closed the worker ends with its last camera.
    pub joining: Option<crossbeam_channel::Receiver<CameraInput>>,
}

/// What became of a detection call for one frame.
enum Outcome {
    Found(Vec<Detection>),
    Failed(DetectError),
    /// The detector panicked: the session may be in any state.
    Panicked,
}

impl<C: FrameCounts> InferenceWorker<C> {
    pub fn run(mut self) {
        // Where the next sweep for a batch starts, so no camera is always first.
        let mut cursor = 0;
        loop {
            // (Appended: the indices of the cameras already served stay as they are.)
            let joining = self.take_joining();
            if self.inputs.is_empty() {
                // No camera yet: wait for one to join (or for the queue to close).
                match self.joining.as_ref().map(|j| j.recv()) {
                    Some(Ok(input)) => self.inputs.push(input),
                    _ if joining => self.joining = None,
                    _ => break,
                }
                continue;
            }
            let mut select = Select::new();
            for input in &self.inputs {
                select.recv(input.frames.channel());
            }
            let Ok(index) = select.ready_timeout(POLL) else {
                continue;
            };
            let first = match self.inputs[index].take(index) {
                Ok(Some(taken)) => taken,
                // Another worker was quicker.
                Ok(None) => continue,
                Err(_) => {
                    // That camera's source has ended and its queue is empty.
                    self.inputs.swap_remove(index);
                    continue;
                }
            };
            let mut batch = Vec::with_capacity(self.detector.max_batch().max(1));
            if !self.admit(first, &mut batch) {
                return;
            }
            if !self.fill(&mut batch, &mut cursor) {
                return;
            }
            if !batch.is_empty() && !self.detect(batch) {
                return;
            }
        }
    }

    /// Takes the cameras added since the last call; true while more may come.
    fn take_joining(&mut self) -> bool {
        let Some(joining) = &self.joining else {
            return false;
        };
        loop {
            match joining.try_recv() {
                Ok(input) => self.inputs.push(input),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => {
                    self.joining = None;
                    return false;
                }
            }
        }
    }

    /// Sends a frame the interval skips straight on (the tracker predicts it); keeps a frame
    /// to detect in `batch`. False when the rules stage is gone.
    fn admit(&self, taken: Taken, batch: &mut Vec<Taken>) -> bool {
        if taken.infer {
            batch.push(taken);
            return true;
        }
        let input = &self.inputs[taken.input];
        self.counters.analysed();
        input.analysed.increment(1);
        // The tracker carries objects through this frame and a rule may fire on it: while
        // objects are in view, its pixels are the snapshot of that moment.
        let image = ((input.keep_images && input.objects.get()) || input.preview_due())
            .then(|| owned_copy(&taken.frame.image).map(Arc::new))
            .flatten();
        let detected = Detected {
            camera: input.camera.clone(),
            dispatch: taken.dispatch,
            gap: taken.gap,
            frame: Some(AnalysedFrame {
                info: taken.frame.info,
                detections: Vec::new(),
                inference: Duration::ZERO,
                inferred: false,
                tracks: Vec::new(),
            }),
            image,
        };
        self.out.send(detected).is_ok()
    }

    /// Fills `batch` up to the detector's batch size with frames from the cameras in turn,
    /// one per camera per sweep (so a busy camera cannot crowd the others out), waiting at
    /// most `max_wait` for frames to arrive. False when the rules stage is gone.
    fn fill(&mut self, batch: &mut Vec<Taken>, cursor: &mut usize) -> bool {
        let capacity = self.detector.max_batch().max(1);
        if batch.len() >= capacity || batch.is_empty() {
            return true;
        }
        let deadline = Instant::now() + self.max_wait;
        // Cameras whose source has ended and whose queue is empty: a closed channel is always
        // "ready", so waiting on it would spin. `run` removes them (batch entries hold input
        // indices, so not here).
        let count = self.inputs.len();
        let mut ended = vec![false; count];
        while batch.len() < capacity {
            let mut took_any = false;
            for step in 0..count {
                if batch.len() >= capacity {
                    break;
                }
                let index = (*cursor + step) % count;
                if ended[index] {
                    continue;
                }
                match self.inputs[index].take(index) {
                    Ok(Some(taken)) => {
                        took_any = true;
                        if !self.admit(taken, batch) {
                            return false;
                        }
                    }
                    Ok(None) => {}
                    Err(_) => ended[index] = true,
                }
            }
            *cursor = (*cursor + 1) % count.max(1);
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if took_any {
                continue;
            }
            let open: Vec<usize> = (0..count).filter(|&i| !ended[i]).collect();
            if open.is_empty() {
                break;
            }
            let mut select = Select::new();
            for &i in &open {
                select.recv(self.inputs[i].frames.channel());
            }
            if select.ready_timeout(deadline - now).is_err() {
                break;
            }
        }
        true
    }

    /// Runs the detector on `batch` and sends every frame on. False when the rules stage is
    /// gone; panics again (after sending) if the detector panicked.
    fn detect(&mut self, batch: Vec<Taken>) -> bool {
        let span = tracing::debug_span!("detect", frames = batch.len());
        let _entered = span.enter();
        let started = Instant::now();
        for taken in &batch {
            // Decode to the model call: the camera's queue and the wait for the batch to fill.
            self.inputs[taken.input]
                .queue_wait
                .record(taken.frame.info.decoded_at.elapsed().as_secs_f64());
        }
        let mut outcomes: Vec<Option<Outcome>> = batch.iter().map(|_| None).collect();
        let mut panic = None;
        let mut views = Vec::with_capacity(batch.len());
        let mut viewed = Vec::with_capacity(batch.len());
        for (i, taken) in batch.iter().enumerate() {
            match ImageView::of_frame(&taken.frame) {
                Ok(view) => {
                    views.push(view);
                    viewed.push(i);
                }
                Err(e) => outcomes[i] = Some(Outcome::Failed(e)),
            }
        }
        if !views.is_empty() {
            let detector = &mut self.detector;
            let results = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                detector.detect_batch(&views)
            }));
            drop(views);
            match results {
                Ok(results) => {
                    let mut results = results.into_iter();
                    for &i in &viewed {
                        outcomes[i] = Some(match results.next() {
                            Some(Ok(found)) => Outcome::Found(found),
                            Some(Err(e)) => Outcome::Failed(e),
                            None => Outcome::Failed(DetectError::Session {
                                model: "detector".into(),
                                action: "batch",
                                reason: "fewer results than images".into(),
                            }),
                        });
                    }
                }
                Err(payload) => {
                    tracing::error!(worker = %self.name, cause = %panic_message(payload.as_ref()), "the detector panicked");
                    for &i in &viewed {
                        outcomes[i] = Some(Outcome::Panicked);
                    }
                    panic = Some(payload);
                }
            }
        }
        let inference = started.elapsed();
        for (taken, outcome) in batch.into_iter().zip(outcomes) {
            let input = &self.inputs[taken.input];
            let frame = &taken.frame;
            let mut image = None;
            let analysed = match outcome {
                Some(Outcome::Found(mut detections)) => {
                    // Boxes in the camera's own pixels, whatever size the detector saw.
                    let (sx, sy) = frame.image_scale();
                    if (sx, sy) != (1.0, 1.0) {
                        for d in &mut detections {
                            d.bbox = d.bbox.scaled(sx, sy);
                        }
                    }
                    input
                        .filter
                        .apply(&mut detections, frame.info.width, frame.info.height);
                    input.objects.set(!detections.is_empty());
                    input.observe(&detections);
                    if (input.keep_images && !detections.is_empty()) || input.preview_due() {
                        image = owned_copy(&frame.image).map(Arc::new);
                    }
                    self.counters.analysed();
                    self.counters.inferred();
                    input.analysed.increment(1);
                    input.inferred.increment(1);
                    Some(AnalysedFrame {
                        info: frame.info.clone(),
                        detections,
                        inference,
                        inferred: true,
                        tracks: Vec::new(),
                    })
                }
                Some(Outcome::Failed(e)) => {
                    input.errors.increment(1);
                    tracing::warn!(camera = %frame.info.camera, seq = frame.info.seq, error = %e, "frame skipped");
                    None
                }
                Some(Outcome::Panicked) | None => None,
            };
            let detected = Detected {
                camera: input.camera.clone(),
                dispatch: taken.dispatch,
                gap: taken.gap,
                frame: analysed,
                image,
            };
            // The rules stage waits for every dispatch number: send even a failed frame.
            if self.out.send(detected).is_err() {
                return false;
            }
        }
        if let Some(payload) = panic {
            // The session may be in any state now: this worker stops, and since detection
            // is a stage whose loss loses data, the pipeline drains and exits non-zero.
            std::panic::resume_unwind(payload);
        }
        true
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
