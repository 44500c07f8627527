//! The kiosk's whole behaviour over time as a pure state machine: [`Core::on`] takes an event and
//! the time and returns what to do ([`Effect`]s, performed in order by the I/O loop);
//! [`Core::tick`] does what is due by a given time; [`Core::screen`] is what the display shows;
//! [`Core::next_wake`] is when something is next due. Contact bounce, coalesced presses, the
//! results timeout, the hung-scan deadline, camera and display retries with backoff, the
//! calibration countdowns and the watchdog schedule are all here, tested on a synthetic clock.

use std::time::{Duration, Instant};

use crate::device::display::CalibrationStep;
use crate::device::Screen;

/// The timing the core follows (from `[kiosk]` and `[scene]`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Presses closer than this to the last accepted one are contact bounce.
    pub debounce: Duration,
    /// How long results (or a notice) stay on screen.
    pub results_for: Duration,
    /// A scan running longer than this is a hang: the service exits so that systemd restarts it.
    pub scan_timeout: Duration,
    /// Longest wait between attempts to reopen a lost camera.
    pub camera_retry_max: Duration,
    /// How often to ping systemd's watchdog, if it watches.
    pub watchdog: Option<Duration>,
    /// A press while results are shown asks what goes with the scanned item.
    pub goes_with: bool,
}

/// The first wait before retrying a lost camera or display; it doubles up to its maximum.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between attempts to reopen a failed display.
const DISPLAY_RETRY_MAX: Duration = Duration::from_secs(60);
/// How long the person gets to step out of view, and to hold the card up.
pub const STEP_AWAY: Duration = Duration::from_secs(3);
pub const HOLD_CARD: Duration = Duration::from_secs(5);

/// What happens to the kiosk.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The button (or SIGUSR1), pressed at that time.
    Press(Instant),
    /// The trigger's input ended for good (stdin closed): stop once idle.
    TriggerEnded,
    /// SIGHUP: reload the catalogue.
    ReloadRequested,
    /// The catalogue was reloaded (its item count), or refused (the old one stays).
    Reloaded(Result<usize, String>),
    /// SIGTERM, SIGINT.
    Shutdown(&'static str),
    /// A scan finished.
    Scanned(Outcome),
    /// The camera was (re)opened, or could not be.
    CameraProbed(Result<String, String>),
    /// SIGUSR2: recalibrate.
    CalibrateRequested,
    /// The empty scene is taken and the card is next, or calibration failed there.
    EmptySceneTaken(Result<(), String>),
    /// Calibration finished or was refused (the previous one is kept).
    Calibrated(Result<Calibrated, String>),
    /// Showing a screen, or reopening the display, failed.
    DisplayFailed(String),
    /// The display was reopened.
    DisplayBack(String),
    /// What goes with the shown scan's item: (id, category), best first.
    WentWith(Vec<(String, String)>),
}

/// A finished calibration: where it is kept, and whether it measured the light with the card.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibrated {
    pub summary: String,
    pub with_card: bool,
}

/// What a scan came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The nearest items (id, score), best first.
    Results(Vec<(String, f32)>),
    /// A person's outfit: per garment top to bottom, its label and best ids.
    Outfit(Vec<(String, Vec<String>)>),
    /// The frame showed the empty scene.
    Nothing,
    /// The camera sent only bad frames (corrupt, the wrong size); it is kept.
    BadFrame(String),
    /// The camera is gone or stopped: it is reopened with backoff.
    CameraLost(String),
    /// The look-up failed.
    Failed(String),
}

/// A systemd notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Status(String),
    Watchdog,
    Stopping,
}

/// What the I/O loop is to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Scan for the press at `pressed`.
    Scan {
        pressed: Instant,
    },
    /// Find what goes with the last scan's item and report [`Event::WentWith`].
    GoesWith,
    /// (Re)open the camera.
    ProbeCamera,
    CalibrateEmptyScene,
    CalibrateCard,
    /// Load the catalogue again and report [`Event::Reloaded`].
    ReloadTable,
    /// Write the finished scan's log line, synced, before its screen is shown.
    LogScan {
        scan: u64,
        coalesced: u32,
    },
    /// Reopen (re-initialise) the display and report [`Event::DisplayBack`] or
    /// [`Event::DisplayFailed`].
    ReopenDisplay,
    Notify(Notice),
    /// Stop the service: `Err` makes systemd restart it.
    Exit(Result<(), String>),
}

/// Where the kiosk is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Idle,
    /// A scan for the press at `pressed` runs since `started`.
    Scanning {
        pressed: Instant,
        started: Instant,
    },
    /// A scan's outcome shows until `until`.
    Showing {
        until: Instant,
    },
}

/// Where a calibration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Calibrating {
    StepAway { until: Instant },
    TakingEmptyScene,
    HoldCard { until: Instant },
    ReadingCard,
}

/// A device that fails and is retried with doubling waits.
#[derive(Debug, Clone)]
struct Retry {
    fault: Option<String>,
    delay: Duration,
    max: Duration,
    /// When to try again.
    next: Option<Instant>,
    /// An attempt is under way.
    trying: bool,
}

impl Retry {
    fn new(max: Duration) -> Self {
        Retry {
            fault: None,
            delay: FIRST_RETRY.min(max),
            max,
            next: None,
            trying: false,
        }
    }

    /// It failed at `now`: try again after the current delay, which then doubles.
    fn failed(&mut self, message: String, now: Instant) {
        self.trying = false;
        self.fault = Some(message);
        if self.next.is_none() {
            self.next = Some(now + self.delay);
            self.delay = (self.delay * 2).min(self.max);
        }
    }

    /// It works; returns whether it had been failing.
    fn works(&mut self) -> bool {
        self.trying = false;
        self.next = None;
        self.delay = FIRST_RETRY.min(self.max);
        self.fault.take().is_some()
    }

    /// Whether an attempt is due at `now` (and marks it under way).
    fn due(&mut self, now: Instant) -> bool {
        if !self.trying && self.next.is_some_and(|at| now >= at) {
            self.next = None;
            self.trying = true;
            return true;
        }
        false
    }
}

/// The kiosk's state and rules.
#[derive(Debug)]
pub struct Core {
    settings: Settings,
    state: State,
    /// The last accepted press (contact bounce is judged against it).
    last_press: Option<Instant>,
    /// The first press during a scan: at most one queued scan.
    queued: Option<Instant>,
    coalesced: u32,
    calibrating: Option<Calibrating>,
    items: usize,
    /// The last scan's screen (or, after a second press, what goes with its item).
    outcome: Option<Screen>,
    /// "Goes with" was asked for the results shown (the next press scans again).
    asked_goes_with: bool,
    /// A message (a refused reload, a calibration) shown until its time.
    notice: Option<(Screen, Instant)>,
    camera: Retry,
    display: Retry,
    last_ping: Instant,
    scans: u64,
    stop_when_idle: bool,
    /// Why the kiosk stopped, once it has: the last screen says so.
    stopped: Option<Screen>,
}

impl Core {
    /// A kiosk ready at `now` with a catalogue of `items`; returns the effects to start with.
    pub fn new(settings: Settings, items: usize, now: Instant) -> (Self, Vec<Effect>) {
        let camera = Retry {
            trying: true,
            ..Retry::new(settings.camera_retry_max)
        };
        let core = Core {
            settings,
            state: State::Idle,
            last_press: None,
            queued: None,
            coalesced: 0,
            calibrating: None,
            items,
            outcome: None,
            asked_goes_with: false,
            notice: None,
            camera,
            display: Retry::new(DISPLAY_RETRY_MAX),
            last_ping: now,
            scans: 0,
            stop_when_idle: false,
            stopped: None,
        };
        (core, vec![Effect::ProbeCamera])
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Reacts to `event` at `now`.
    pub fn on(&mut self, event: Event, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        match event {
            Event::Press(at) => self.press(at, now, &mut effects),
            Event::Scanned(outcome) => self.scanned(outcome, now, &mut effects),
            Event::CameraProbed(probe) => self.camera_probed(probe, now),
            Event::DisplayFailed(message) => {
                if self.display.fault.is_none() {
                    tracing::warn!("display failed, running on without it and retrying: {message}");
                } else {
                    tracing::debug!("display still failing: {message}");
                }
                self.display.failed(message, now);
            }
            Event::DisplayBack(name) => {
                if self.display.works() {
                    tracing::info!("display {name} works again");
                }
            }
            Event::ReloadRequested => {
                effects.push(Effect::Notify(Notice::Status(
                    "reloading the catalogue".into(),
                )));
                effects.push(Effect::ReloadTable);
            }
            Event::Reloaded(result) => self.reloaded(result, now, &mut effects),
            Event::CalibrateRequested => self.calibrate_requested(now),
            Event::EmptySceneTaken(Ok(())) => {
                tracing::info!(
                    "empty scene taken: hold the white card up within {} s",
                    HOLD_CARD.as_secs()
                );
                self.calibrating = Some(Calibrating::HoldCard {
                    until: now + HOLD_CARD,
                });
            }
            Event::EmptySceneTaken(Err(reason)) | Event::Calibrated(Err(reason)) => {
                self.calibration_failed(reason, now)
            }
            Event::Calibrated(Ok(calibrated)) => self.calibrated(calibrated, now),
            Event::WentWith(items) => self.went_with(items, now),
            Event::TriggerEnded => {
                tracing::info!("trigger input ended");
                self.stop_when_idle = true;
                self.stop_if_idle(&mut effects);
            }
            Event::Shutdown(signal) => {
                tracing::info!("{signal}: stopping");
                self.stop(Ok(()), Screen::Stopped, &mut effects);
            }
        }
        effects
    }

    fn camera_probed(&mut self, probe: Result<String, String>, now: Instant) {
        match probe {
            Ok(camera) => {
                if self.camera.works() {
                    tracing::info!("camera back: {camera}");
                }
            }
            Err(message) => {
                if self.camera.fault.as_ref() != Some(&message) {
                    tracing::warn!("camera offline: {message}");
                }
                self.camera.failed(message, now);
            }
        }
    }

    /// A reload's outcome: the new item count, or the reason shown while the old table stays.
    fn reloaded(&mut self, result: Result<usize, String>, now: Instant, effects: &mut Vec<Effect>) {
        match result {
            Ok(items) => {
                self.items = items;
                self.notice = None;
            }
            Err(message) => {
                self.notice = Some((
                    Screen::Message {
                        title: "Reload failed".into(),
                        detail: message,
                    },
                    now + self.settings.results_for,
                ))
            }
        }
        effects.push(Effect::Notify(Notice::Status(format!(
            "ready: {} items",
            self.items
        ))));
    }

    fn calibrate_requested(&mut self, now: Instant) {
        if self.calibrating.is_some() {
            tracing::info!("calibration requested while calibrating: ignored");
            return;
        }
        tracing::info!(
            "calibration requested: capturing the empty scene in {} s",
            STEP_AWAY.as_secs()
        );
        self.calibrating = Some(Calibrating::StepAway {
            until: now + STEP_AWAY,
        });
    }

    fn calibration_failed(&mut self, reason: String, now: Instant) {
        self.calibrating = None;
        tracing::error!("calibration failed, the previous one is kept: {reason}");
        self.notice(
            Screen::Message {
                title: "Calibration".into(),
                detail: format!("failed: {reason}"),
            },
            now,
        );
    }

    fn calibrated(&mut self, calibrated: Calibrated, now: Instant) {
        self.calibrating = None;
        tracing::info!("calibrated: {}", calibrated.summary);
        let detail = if calibrated.with_card {
            "The empty scene and the light are saved"
        } else {
            "The empty scene is saved"
        };
        self.notice(
            Screen::Message {
                title: "Calibrated".into(),
                detail: detail.into(),
            },
            now,
        );
    }

    /// What goes with the shown item, shown only while the results it answers are on screen.
    fn went_with(&mut self, items: Vec<(String, String)>, now: Instant) {
        if !(self.asked_goes_with && matches!(self.state, State::Showing { .. })) {
            return;
        }
        self.outcome = Some(if items.is_empty() {
            Screen::Message {
                title: "Goes with".into(),
                detail: "Nothing to pair with this item yet".into(),
            }
        } else {
            Screen::GoesWith { items }
        });
        self.state = State::Showing {
            until: now + self.settings.results_for,
        };
    }

    /// Does what is due by `now`: results expire, countdowns end, retries and pings fall due, a
    /// hung scan ends the service.
    pub fn tick(&mut self, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.stopped.is_some() {
            return effects;
        }
        match self.state {
            State::Showing { until } if now >= until => self.state = State::Idle,
            State::Scanning { started, .. }
                if now.saturating_duration_since(started) > self.settings.scan_timeout =>
            {
                let message = format!(
                    "a scan has run for over {:.0} s: giving up so that the service restarts",
                    self.settings.scan_timeout.as_secs_f64()
                );
                self.stop(
                    Err(message),
                    Screen::Message {
                        title: "Scan hung".into(),
                        detail: "restarting".into(),
                    },
                    &mut effects,
                );
                return effects;
            }
            _ => {}
        }
        let scanning = matches!(self.state, State::Scanning { .. });
        match self.calibrating {
            Some(Calibrating::StepAway { until }) if now >= until && !scanning => {
                effects.push(Effect::CalibrateEmptyScene);
                self.calibrating = Some(Calibrating::TakingEmptyScene);
            }
            Some(Calibrating::HoldCard { until }) if now >= until => {
                effects.push(Effect::CalibrateCard);
                self.calibrating = Some(Calibrating::ReadingCard);
            }
            _ => {}
        }
        if self.camera.due(now) {
            effects.push(Effect::ProbeCamera);
        }
        if self.display.due(now) {
            effects.push(Effect::ReopenDisplay);
        }
        if let Some(every) = self.settings.watchdog {
            if now.saturating_duration_since(self.last_ping) >= every {
                effects.push(Effect::Notify(Notice::Watchdog));
                self.last_ping = now;
            }
        }
        if let Some(notice) = &self.notice {
            if now >= notice.1 {
                self.notice = None;
            }
        }
        self.stop_if_idle(&mut effects);
        effects
    }

    /// What the display shows at `now`.
    pub fn screen(&self, now: Instant) -> Screen {
        if let Some(last) = &self.stopped {
            return last.clone();
        }
        if let State::Scanning { pressed, .. } = self.state {
            let half_seconds = now.saturating_duration_since(pressed).as_millis() / 500;
            return Screen::Scanning {
                tenths: u32::try_from(half_seconds * 5).unwrap_or(u32::MAX),
            };
        }
        if let Some(calibrating) = self.calibrating {
            let seconds =
                |until: Instant| until.saturating_duration_since(now).as_secs_f64().ceil() as u32;
            let (step, seconds) = match calibrating {
                Calibrating::StepAway { until } => (CalibrationStep::EmptyScene, seconds(until)),
                Calibrating::TakingEmptyScene => (CalibrationStep::EmptyScene, 0),
                Calibrating::HoldCard { until } => (CalibrationStep::Card, seconds(until)),
                Calibrating::ReadingCard => (CalibrationStep::Card, 0),
            };
            return Screen::Calibrating { step, seconds };
        }
        if let Some((notice, until)) = &self.notice {
            if now < *until {
                return notice.clone();
            }
        }
        if let (State::Showing { .. }, Some(outcome)) = (self.state, &self.outcome) {
            return outcome.clone();
        }
        match &self.camera.fault {
            Some(fault) => Screen::Message {
                title: "Camera offline".into(),
                detail: fault.clone(),
            },
            None => Screen::Idle { items: self.items },
        }
    }

    /// When [`Core::tick`] (or a redraw) is next due, after `now`.
    pub fn next_wake(&self, now: Instant) -> Instant {
        let mut wake = now + Duration::from_secs(1);
        let mut at = |t: Instant| wake = wake.min(t.max(now));
        match self.state {
            State::Scanning { started, .. } => {
                // The elapsed time on screen, and the hung-scan deadline.
                at(now + Duration::from_millis(100));
                at(started + self.settings.scan_timeout);
            }
            State::Showing { until } => at(until),
            State::Idle => {}
        }
        if let Some(Calibrating::StepAway { until } | Calibrating::HoldCard { until }) =
            self.calibrating
        {
            at(until);
            // The countdown moves on the screen.
            at(now + Duration::from_millis(250));
        }
        if let Some((_, until)) = &self.notice {
            at(*until);
        }
        for retry in [&self.camera, &self.display] {
            if let Some(next) = retry.next {
                at(next);
            }
        }
        if let Some(every) = self.settings.watchdog {
            at(self.last_ping + every);
        }
        wake
    }

    fn press(&mut self, at: Instant, now: Instant, effects: &mut Vec<Effect>) {
        if self.calibrating.is_some() || self.stopped.is_some() {
            tracing::debug!("press ignored: calibrating");
            return;
        }
        let bounce = self
            .last_press
            .is_some_and(|last| at.saturating_duration_since(last) < self.settings.debounce);
        if bounce {
            tracing::debug!("press ignored: contact bounce");
            return;
        }
        self.last_press = Some(at);
        let results_shown = matches!(
            self.outcome,
            Some(Screen::Results { .. } | Screen::Outfit { .. })
        );
        match self.state {
            State::Scanning { .. } => {
                self.queued.get_or_insert(at);
                self.coalesced += 1;
            }
            State::Showing { .. }
                if self.settings.goes_with && results_shown && !self.asked_goes_with =>
            {
                self.asked_goes_with = true;
                effects.push(Effect::GoesWith);
            }
            State::Idle | State::Showing { .. } => {
                self.state = State::Scanning {
                    pressed: at,
                    started: now,
                };
                effects.push(Effect::Scan { pressed: at });
            }
        }
    }

    fn scanned(&mut self, outcome: Outcome, now: Instant, effects: &mut Vec<Effect>) {
        self.scans += 1;
        let screen = match outcome {
            Outcome::Results(items) => Screen::Results { items },
            Outcome::Outfit(garments) => Screen::Outfit { garments },
            Outcome::Nothing => Screen::NothingToScan,
            Outcome::BadFrame(message) => Screen::Message {
                title: "Scan failed".into(),
                detail: format!("bad camera frame: {message}"),
            },
            Outcome::CameraLost(message) => {
                if self.camera.fault.is_none() {
                    tracing::warn!("camera lost: {message}");
                }
                self.camera.failed(message.clone(), now);
                Screen::Message {
                    title: "Camera offline".into(),
                    detail: message,
                }
            }
            Outcome::Failed(message) => Screen::Message {
                title: "Scan failed".into(),
                detail: message,
            },
        };
        if matches!(
            screen,
            Screen::Results { .. } | Screen::Outfit { .. } | Screen::NothingToScan
        ) && self.camera.works()
        {
            tracing::info!("camera back");
        }
        self.outcome = Some(screen);
        self.asked_goes_with = false;
        effects.push(Effect::LogScan {
            scan: self.scans,
            coalesced: std::mem::take(&mut self.coalesced),
        });
        match self.queued.take() {
            Some(pressed) => {
                self.state = State::Scanning {
                    pressed,
                    started: now,
                };
                effects.push(Effect::Scan { pressed });
            }
            None => {
                self.state = State::Showing {
                    until: now + self.settings.results_for,
                };
                self.stop_if_idle(effects);
            }
        }
    }

    fn notice(&mut self, screen: Screen, now: Instant) {
        self.notice = Some((screen, now + self.settings.results_for));
    }

    fn stop_if_idle(&mut self, effects: &mut Vec<Effect>) {
        let busy = matches!(self.state, State::Scanning { .. }) || self.calibrating.is_some();
        if self.stop_when_idle && !busy && self.stopped.is_none() {
            tracing::info!("trigger closed and no scan pending: stopping");
            self.stop(Ok(()), Screen::Stopped, effects);
        }
    }

    fn stop(&mut self, result: Result<(), String>, screen: Screen, effects: &mut Vec<Effect>) {
        self.stopped = Some(screen);
        effects.push(Effect::Notify(Notice::Stopping));
        effects.push(Effect::Exit(result));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn settings() -> Settings {
        Settings {
            debounce: ms(50),
            results_for: ms(8000),
            scan_timeout: ms(30_000),
            camera_retry_max: ms(30_000),
            watchdog: None,
            goes_with: false,
        }
    }

    /// A core whose camera opened at `t0`.
    fn ready(settings: Settings, t0: Instant) -> Core {
        let (mut core, effects) = Core::new(settings, 300, t0);
        assert_eq!(effects, [Effect::ProbeCamera]);
        core.on(Event::CameraProbed(Ok("camera".into())), t0);
        core
    }

    fn results() -> Outcome {
        Outcome::Results(vec![("15970".into(), 0.9)])
    }

    #[test]
    fn an_outfit_is_shown_garment_by_garment_and_a_second_press_shows_what_completes_it() {
        let t0 = Instant::now();
        let mut core = ready(
            Settings {
                goes_with: true,
                ..settings()
            },
            t0,
        );
        core.on(Event::Press(t0), t0);
        let garments = vec![
            (
                "Top".to_string(),
                vec!["15970".to_string(), "39386".to_string()],
            ),
            ("Shoes".to_string(), vec!["17029".to_string()]),
        ];
        let effects = core.on(
            Event::Scanned(Outcome::Outfit(garments.clone())),
            t0 + ms(900),
        );
        assert!(matches!(effects[0], Effect::LogScan { scan: 1, .. }));
        assert_eq!(core.screen(t0 + ms(900)), Screen::Outfit { garments });
        // As after one item: a second press asks what goes with it (what the outfit lacks)...
        let t1 = t0 + ms(3000);
        assert_eq!(core.on(Event::Press(t1), t1), [Effect::GoesWith]);
        let items = vec![("30001".to_string(), "Watches".to_string())];
        core.on(Event::WentWith(items.clone()), t1 + ms(5));
        assert_eq!(core.screen(t1 + ms(5)), Screen::GoesWith { items });
        // ...and a third scans again.
        let t2 = t1 + ms(1000);
        assert_eq!(
            core.on(Event::Press(t2), t2),
            [Effect::Scan { pressed: t2 }]
        );
    }

    #[test]
    fn without_goes_with_a_second_press_on_an_outfit_scans_again() {
        let t0 = Instant::now();
        let mut core = ready(settings(), t0);
        core.on(Event::Press(t0), t0);
        let garments = vec![("Top".to_string(), vec!["15970".to_string()])];
        core.on(Event::Scanned(Outcome::Outfit(garments)), t0 + ms(900));
        let t1 = t0 + ms(3000);
        assert_eq!(
            core.on(Event::Press(t1), t1),
            [Effect::Scan { pressed: t1 }]
        );
    }

    #[test]
    fn a_second_press_on_results_shows_what_goes_with_it_and_a_third_scans_again() {
        let t0 = Instant::now();
        let mut core = ready(
            Settings {
                goes_with: true,
                ..settings()
            },
            t0,
        );
        core.on(Event::Press(t0), t0);
        core.on(Event::Scanned(results()), t0 + ms(600));
        let t1 = t0 + ms(2000);
        assert_eq!(core.on(Event::Press(t1), t1), [Effect::GoesWith]);
        // Results stay up until the answer comes.
        assert!(matches!(core.screen(t1), Screen::Results { .. }));
        let items = vec![("20001".to_string(), "Bottomwear".to_string())];
        core.on(Event::WentWith(items.clone()), t1 + ms(5));
        assert_eq!(core.screen(t1 + ms(5)), Screen::GoesWith { items });
        // It stays its own full time, then the kiosk is idle again.
        assert!(matches!(
            core.screen(t1 + ms(7000)),
            Screen::GoesWith { .. }
        ));
        core.tick(t1 + ms(8100));
        assert_eq!(core.screen(t1 + ms(8100)), Screen::Idle { items: 300 });
        // A press on "goes with" scans again.
        let t = t1 + ms(9000);
        core.on(Event::Press(t), t);
        core.on(Event::Scanned(results()), t + ms(600));
        core.on(Event::Press(t + ms(1000)), t + ms(1000));
        core.on(
            Event::WentWith(vec![("1".into(), "Shoes".into())]),
            t + ms(1000),
        );
        let t2 = t + ms(1500);
        assert_eq!(
            core.on(Event::Press(t2), t2),
            [Effect::Scan { pressed: t2 }]
        );
        // With nothing to pair, a message says so.
        core.on(Event::Scanned(results()), t2 + ms(600));
        let t3 = t2 + ms(1000);
        core.on(Event::Press(t3), t3);
        core.on(Event::WentWith(Vec::new()), t3);
        assert!(
            matches!(core.screen(t3), Screen::Message { ref title, .. } if title == "Goes with")
        );
    }

    #[test]
    fn without_goes_with_a_press_on_results_scans_again() {
        let t0 = Instant::now();
        let mut core = ready(settings(), t0);
        core.on(Event::Press(t0), t0);
        core.on(Event::Scanned(results()), t0 + ms(600));
        let t1 = t0 + ms(2000);
        assert_eq!(
            core.on(Event::Press(t1), t1),
            [Effect::Scan { pressed: t1 }]
        );
    }

    #[test]
    fn contact_bounce_never_starts_a_second_scan() {
        let t0 = Instant::now();
        let mut core = ready(settings(), t0);
        assert_eq!(
            core.on(Event::Press(t0), t0),
            [Effect::Scan { pressed: t0 }]
        );
        for bounce in [1, 3, 7, 12, 30, 49] {
            assert!(core.on(Event::Press(t0 + ms(bounce)), t0).is_empty());
        }
        // The scan ends quickly (within the bounce window): nothing was queued.
        let effects = core.on(Event::Scanned(results()), t0 + ms(40));
        assert_eq!(
            effects,
            [Effect::LogScan {
                scan: 1,
                coalesced: 0
            }]
        );
        // Bounce of the release edge, after the scan, still inside the window.
        assert!(core.on(Event::Press(t0 + ms(45)), t0 + ms(45)).is_empty());
        assert!(matches!(core.state(), State::Showing { .. }));
    }

    #[test]
    fn presses_during_a_scan_coalesce_into_one_queued_scan_logged_before_the_next_starts() {
        let t0 = Instant::now();
        let mut core = ready(settings(), t0);
        core.on(Event::Press(t0), t0);
        for n in 1..=5 {
            assert!(core
                .on(Event::Press(t0 + ms(100 * n)), t0 + ms(100 * n))
                .is_empty());
        }
        // The first queued press is the one whose wait is measured.
        let effects = core.on(Event::Scanned(results()), t0 + ms(700));
        assert_eq!(
            effects,
            [
                Effect::LogScan {
                    scan: 1,
                    coalesced: 5
                },
                Effect::Scan {
                    pressed: t0 + ms(100)
                }
            ]
        );
        assert_eq!(core.screen(t0 + ms(700)), Screen::Scanning { tenths: 5 });
        core.on(Event::Scanned(Outcome::Nothing), t0 + ms(1400));
        assert_eq!(
            core.state(),
            State::Showing {
                until: t0 + ms(9400)
            }
        );
        assert_eq!(core.screen(t0 + ms(1400)), Screen::NothingToScan);
    }

    #[test]
    fn results_show_for_their_time_then_idle_and_a_press_while_showing_scans_again() {
        let t0 = Instant::now();
        let mut core = ready(
            Settings {
                results_for: ms(1000),
                ..settings()
            },
            t0,
        );
        core.on(Event::Press(t0), t0);
        core.on(Event::Scanned(results()), t0 + ms(500));
        assert_eq!(core.next_wake(t0 + ms(600)), t0 + ms(1500));
        core.tick(t0 + ms(1499));
        assert_eq!(
            core.screen(t0 + ms(1499)),
            Screen::Results {
                items: vec![("15970".into(), 0.9)]
            }
        );
        core.tick(t0 + ms(1500));
        assert_eq!(core.state(), State::Idle);
        assert_eq!(core.screen(t0 + ms(1500)), Screen::Idle { items: 300 });
        core.on(Event::Press(t0 + ms(2000)), t0 + ms(2000));
        core.on(Event::Scanned(results()), t0 + ms(2500));
        assert_eq!(
            core.on(Event::Press(t0 + ms(2600)), t0 + ms(2600)),
            [Effect::Scan {
                pressed: t0 + ms(2600)
            }]
        );
    }

    #[test]
    fn a_lost_camera_is_retried_with_doubling_waits_up_to_the_cap() {
        let t0 = Instant::now();
        let mut core = ready(
            Settings {
                camera_retry_max: ms(5000),
                ..settings()
            },
            t0,
        );
        core.on(Event::Press(t0), t0);
        core.on(Event::Scanned(Outcome::CameraLost("unplugged".into())), t0);
        let offline = Screen::Message {
            title: "Camera offline".into(),
            detail: "unplugged".into(),
        };
        assert_eq!(core.screen(t0), offline);
        // Step through time as the I/O loop does; each attempt fails again.
        let (mut now, mut last) = (t0, t0);
        let mut waits = Vec::new();
        while waits.len() < 6 {
            now = core.next_wake(now);
            if core.tick(now).contains(&Effect::ProbeCamera) {
                waits.push((now - last).as_millis());
                last = now;
                core.on(Event::CameraProbed(Err("unplugged".into())), now);
            }
        }
        assert_eq!(waits, [1000, 2000, 4000, 5000, 5000, 5000]);
        // After the results, idle shows the fault until the camera is back.
        core.tick(now + ms(8000));
        assert_eq!(core.screen(now + ms(8000)), offline);
        core.on(Event::CameraProbed(Ok("camera".into())), now + ms(8000));
        assert_eq!(core.screen(now + ms(8000)), Screen::Idle { items: 300 });
        // Back to the first wait after the next loss.
        core.on(Event::Press(now + ms(9000)), now + ms(9000));
        core.on(
            Event::Scanned(Outcome::CameraLost("gone".into())),
            now + ms(9000),
        );
        assert_eq!(core.next_wake(now + ms(9000)), now + ms(10_000));
    }

    #[test]
    fn a_retry_cap_under_a_second_caps_the_first_wait_too() {
        let t0 = Instant::now();
        let (mut core, _) = Core::new(
            Settings {
                camera_retry_max: ms(300),
                ..settings()
            },
            300,
            t0,
        );
        core.on(Event::CameraProbed(Err("no camera".into())), t0);
        assert_eq!(core.next_wake(t0), t0 + ms(300));
    }

    #[test]
    fn a_bad_frame_is_a_failed_scan_not_a_lost_camera() {
        let t0 = Instant::now();
        let mut core = ready(settings(), t0);
        core.on(Event::Press(t0), t0);
        core.on(
            Event::Scanned(Outcome::BadFrame("corrupt MJPEG".into())),
            t0,
        );
        assert!(
            matches!(core.screen(t0), Screen::Message { ref title, .. } if title == "Scan failed")
        );
        // No reopening, and idle is "Press to scan".
        assert!(core.tick(t0 + ms(60_000)).is_empty());
        assert_eq!(core.screen(t0 + ms(60_000)), Screen::Idle { items: 300 });
    }

    #[test]
    fn a_hung_scan_stops_the_service_with_a_failure() {
        let t0 = Instant::now();
        let mut core = ready(settings(), t0);
        core.on(Event::Press(t0), t0);
        assert_eq!(core.next_wake(t0 + ms(29_950)), t0 + ms(30_000));
        assert!(core.tick(t0 + ms(30_000)).is_empty());
        let effects = core.tick(t0 + ms(30_001));
        assert!(
            matches!(effects.last(), Some(Effect::Exit(Err(message))) if message.contains("30 s")),
            "{effects:?}"
        );
        assert_eq!(
            core.screen(t0 + ms(30_001)),
            Screen::Message {
                title: "Scan hung".into(),
                detail: "restarting".into()
            }
        );
    }

    #[test]
    fn reloads_update_the_count_or_show_why_they_were_refused() {
        let t0 = Instant::now();
        let mut core = ready(settings(), t0);
        assert_eq!(
            core.on(Event::ReloadRequested, t0),
            [
                Effect::Notify(Notice::Status("reloading the catalogue".into())),
                Effect::ReloadTable
            ]
        );
        core.on(Event::Reloaded(Ok(9583)), t0);
        assert_eq!(core.screen(t0), Screen::Idle { items: 9583 });
        let effects = core.on(Event::Reloaded(Err("truncated table".into())), t0);
        assert_eq!(
            effects,
            [Effect::Notify(Notice::Status("ready: 9583 items".into()))]
        );
        let refused = Screen::Message {
            title: "Reload failed".into(),
            detail: "truncated table".into(),
        };
        assert_eq!(core.screen(t0 + ms(7999)), refused);
        core.tick(t0 + ms(8000));
        assert_eq!(core.screen(t0 + ms(8000)), Screen::Idle { items: 9583 });
    }

    #[test]
    fn calibration_counts_down_takes_the_scene_then_the_card_and_ignores_presses() {
        let t0 = Instant::now();
        let mut core = ready(settings(), t0);
        core.on(Event::CalibrateRequested, t0);
        let step = |seconds| Screen::Calibrating {
            step: CalibrationStep::EmptyScene,
            seconds,
        };
        assert_eq!(core.screen(t0), step(3));
        assert_eq!(core.screen(t0 + ms(1500)), step(2));
        // A press during the countdown starts nothing (and cannot queue behind it).
        assert!(core
            .on(Event::Press(t0 + ms(1000)), t0 + ms(1000))
            .is_empty());
        assert!(core.tick(t0 + ms(2999)).is_empty());
        assert_eq!(core.tick(t0 + ms(3000)), [Effect::CalibrateEmptyScene]);
        assert_eq!(core.screen(t0 + ms(3500)), step(0));
        core.on(Event::EmptySceneTaken(Ok(())), t0 + ms(6000));
        assert_eq!(
            core.screen(t0 + ms(6000)),
            Screen::Calibrating {
                step: CalibrationStep::Card,
                seconds: 5
            }
        );
        assert_eq!(core.tick(t0 + ms(11_000)), [Effect::CalibrateCard]);
        assert!(core
            .on(Event::Press(t0 + ms(11_500)), t0 + ms(11_500))
            .is_empty());
        core.on(
            Event::Calibrated(Err("no card in view".into())),
            t0 + ms(12_000),
        );
        assert_eq!(
            core.screen(t0 + ms(12_000)),
            Screen::Message {
                title: "Calibration".into(),
                detail: "failed: no card in view".into()
            }
        );
        // A press now scans again.
        assert_eq!(
            core.on(Event::Press(t0 + ms(12_100)), t0 + ms(12_100)),
            [Effect::Scan {
                pressed: t0 + ms(12_100)
            }]
        );
    }

    #[test]
    fn calibration_waits_for_a_running_scan() {
        let t0 = Instant::now();
        let mut core = ready(settings(), t0);
        core.on(Event::Press(t0), t0);
        core.on(Event::CalibrateRequested, t0);
        assert!(core.tick(t0 + ms(4000)).is_empty());
        core.on(Event::Scanned(results()), t0 + ms(4500));
        assert_eq!(core.tick(t0 + ms(4500)), [Effect::CalibrateEmptyScene]);
    }

    #[test]
    fn a_lost_display_is_reopened_with_backoff_until_it_answers() {
        let t0 = Instant::now();
        let mut core = ready(settings(), t0);
        core.on(Event::DisplayFailed("I2C write failed".into()), t0);
        let (mut now, mut last) = (t0, t0);
        let mut waits = Vec::new();
        while waits.len() < 8 {
            now = core.next_wake(now);
            if core.tick(now).contains(&Effect::ReopenDisplay) {
                waits.push((now - last).as_secs());
                last = now;
                core.on(Event::DisplayFailed("no answer".into()), now);
            }
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        core.on(Event::DisplayBack("SSD1306".into()), now);
        for _ in 0..200 {
            now = core.next_wake(now);
            assert!(core.tick(now).is_empty(), "no reopening once it answers");
        }
    }

    #[test]
    fn the_watchdog_is_pinged_on_schedule() {
        let t0 = Instant::now();
        let mut core = ready(
            Settings {
                watchdog: Some(ms(15_000)),
                ..settings()
            },
            t0,
        );
        assert_eq!(core.next_wake(t0 + ms(14_500)), t0 + ms(15_000));
        assert_eq!(
            core.tick(t0 + ms(15_000)),
            [Effect::Notify(Notice::Watchdog)]
        );
        assert!(core.tick(t0 + ms(20_000)).is_empty());
        assert_eq!(
            core.tick(t0 + ms(30_000)),
            [Effect::Notify(Notice::Watchdog)]
        );
    }

    #[test]
    fn the_end_of_the_trigger_stops_once_the_running_scan_is_logged() {
        let t0 = Instant::now();
        let mut core = ready(settings(), t0);
        core.on(Event::Press(t0), t0);
        assert!(core.on(Event::TriggerEnded, t0).is_empty());
        let effects = core.on(Event::Scanned(results()), t0 + ms(500));
        assert_eq!(
            effects,
            [
                Effect::LogScan {
                    scan: 1,
                    coalesced: 0
                },
                Effect::Notify(Notice::Stopping),
                Effect::Exit(Ok(()))
            ]
        );
        assert_eq!(core.screen(t0 + ms(500)), Screen::Stopped);
    }
}
