//! Synthetic product data for tests, demos and benchmarks (`sextant gen`, SPEC §11).
//!
//! A port of `shared/tools/gen_events.py`: the same two JSON-lines files in the same
//! line format, the same distributions and the same per-user logic, step by step.
//! The random source is ChaCha8 instead of Python's Mersenne Twister, so a seed
//! gives the same bytes on every machine but not the bytes the Python writes.
//!
//! - `<out>/users.jsonl`: `{"user_id", "traits": {"channel", "country", "plan"}}`
//! - `<out>/events.jsonl`: `{"event_id", "name", "user_id", "timestamp", "properties"}`
//!
//! - `<out>/touches.jsonl`, `<out>/aliases.jsonl`, `<out>/spend.jsonl`: marketing data
//!   (SPEC §11; see `write_marketing` below), drawn from their own random streams.
//!
//! Events are grouped by user, not sorted by time: ingestion order must not matter.
//! A small share of lines is written twice with the same `event_id` (`dup_rate`) to
//! exercise idempotent ingestion.
//!
//! Event names: `signup`, `onboarding_complete`, `session_start`, `view_item`,
//! `add_to_cart`, `purchase` (property `revenue`), `$exposure` (experiment
//! `checkout_v2`, variant `control` | `treatment`, for users who reach a cart from
//! day 30 of the range on), `subscription_changed` (properties `mrr`, the user's MRR after
//! the change, 0 when cancelled, and `plan`) for users on a paid plan.
//!
//! Subscription events come from their own random stream per user and carry their own ids
//! (`s<seed>_<user>_<n>`), written after the user's other events: adding them left every
//! other line byte-identical.

use std::f64::consts::TAU;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use chrono::{Datelike, Days, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, Timelike};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::core::experiment::assign::hash_bucket;

const CHANNELS: [(&str, f64); 5] =
    [("organic", 0.35), ("paid_search", 0.25), ("social", 0.20), ("email", 0.10), ("referral", 0.10)];
const COUNTRIES: [(&str, f64); 6] =
    [("US", 0.40), ("DE", 0.15), ("GB", 0.12), ("IN", 0.13), ("BR", 0.10), ("JP", 0.10)];
const PLANS: [(&str, f64); 3] = [("free", 0.80), ("pro", 0.17), ("enterprise", 0.03)];

/// Per channel, in the order of `CHANNELS`: onboarding rate, daily return base,
/// purchase propensity.
const CHANNEL_BEHAVIOUR: [(f64, f64, f64); 5] =
    [(0.62, 0.30, 1.00), (0.55, 0.22, 1.15), (0.40, 0.16, 0.70), (0.70, 0.38, 1.30), (0.66, 0.34, 1.20)];

const EXPERIMENT: &str = "checkout_v2";
/// Relative lift of the purchase probability in treatment.
const TREATMENT_LIFT: f64 = 1.10;
const DAY_S: f64 = 86_400.0;
/// Carts before this offset happen before the experiment runs, so they expose no one.
const EXPOSURE_FROM_S: f64 = 30.0 * DAY_S;
/// Output buffer size: large enough that ~10 million lines cost few write syscalls.
const WRITE_BUFFER: usize = 4 << 20;

/// Options of `sextant gen`; the defaults are those of the Python reference.
#[derive(Debug, Clone, PartialEq)]
pub struct GenOptions {
    pub users: u64,
    pub days: u32,
    /// First day of the range, UTC.
    pub start: NaiveDate,
    pub seed: u64,
    /// Probability that an event line is written a second time, same `event_id`.
    pub dup_rate: f64,
    /// Output directory, created when missing.
    pub out: PathBuf,
}

impl Default for GenOptions {
    fn default() -> Self {
        Self {
            users: 1000,
            days: 90,
            start: NaiveDate::from_ymd_opt(2026, 1, 1).expect("2026-01-01 is a valid date"),
            seed: 42,
            dup_rate: 0.001,
            out: PathBuf::from("data/gen"),
        }
    }
}

/// What `generate` wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenSummary {
    pub users: u64,
    /// Distinct events (distinct `event_id`s).
    pub events: u64,
    /// Extra lines repeating an event already written.
    pub duplicates: u64,
    /// Anonymous `page_view` touches in touches.jsonl.
    pub touches: u64,
}

/// One event of the user being simulated, before the horizon check.
struct Event {
    /// Seconds since `start`.
    offset_s: f64,
    props: Props,
}

/// Event name and properties. Keeping the properties as plain values (static
/// strings, numbers) means simulating a user allocates nothing.
enum Props {
    Signup { channel: &'static str },
    OnboardingComplete,
    SessionStart { platform: &'static str },
    ViewItem { item: u32, price: f64 },
    AddToCart,
    Exposure { variant: &'static str },
    Purchase { revenue: f64 },
}

impl Props {
    fn name(&self) -> &'static str {
        match self {
            Props::Signup { .. } => "signup",
            Props::OnboardingComplete => "onboarding_complete",
            Props::SessionStart { .. } => "session_start",
            Props::ViewItem { .. } => "view_item",
            Props::AddToCart => "add_to_cart",
            Props::Exposure { .. } => "$exposure",
            Props::Purchase { .. } => "purchase",
        }
    }
}

/// Writes `<out>/users.jsonl` and `<out>/events.jsonl` for `opts`.
pub fn generate(opts: &GenOptions) -> io::Result<GenSummary> {
    if !(0.0..=1.0).contains(&opts.dup_rate) {
        return Err(invalid_input("dup_rate must be between 0 and 1"));
    }
    // Timestamps are printed with four-digit years, like Python's datetime; checking
    // the last day once here also rules out overflow in the per-event date arithmetic.
    let last_day = opts.start.checked_add_days(Days::new(u64::from(opts.days) + 1));
    if opts.start.year() < 1 || last_day.is_none_or(|d| d.year() > 9999) {
        return Err(invalid_input("start and days must stay within the years 1 to 9999"));
    }

    fs::create_dir_all(&opts.out)?;
    let mut users_out = BufWriter::with_capacity(WRITE_BUFFER, File::create(opts.out.join("users.jsonl"))?);
    let mut events_out = BufWriter::with_capacity(WRITE_BUFFER, File::create(opts.out.join("events.jsonl"))?);

    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let start = opts.start.and_time(NaiveTime::MIN);
    let horizon_s = f64::from(opts.days) * DAY_S;
    let mut summary = GenSummary { users: opts.users, events: 0, duplicates: 0, touches: 0 };
    let mut marketing = Marketing::create(opts)?;
    // Reused across users so the hot loop does not allocate.
    let mut events: Vec<Event> = Vec::with_capacity(512);
    let mut user_id = String::with_capacity(32);
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut seq: u64 = 0;
    let mut subscriptions: Vec<Subscription> = Vec::with_capacity(16);

    for i in 0..opts.users {
        user_id.clear();
        write!(user_id, "u{}_{}", opts.seed, i).expect("writing to a String cannot fail");
        let channel = pick(&mut rng, &CHANNELS);
        let country = pick(&mut rng, &COUNTRIES);
        let plan = pick(&mut rng, &PLANS);

        line.clear();
        push_user_line(&mut line, &user_id, CHANNELS[channel].0, COUNTRIES[country].0, PLANS[plan].0);
        users_out.write_all(&line)?;

        events.clear();
        simulate_user(&mut rng, &user_id, channel, horizon_s, &mut events);
        // The signup is the first event simulated; touches and the alias lead up to it.
        let signup_s = events[0].offset_s;
        if signup_s < horizon_s {
            summary.touches += marketing.write_user(opts, i, channel, start, signup_s)?;
        }
        for event in &events {
            // A day starting before the horizon can still place events after it
            // (later in that day, or onboarding); like the Python, drop those.
            if event.offset_s >= horizon_s {
                continue;
            }
            seq += 1;
            line.clear();
            push_event_line(&mut line, opts.seed, seq, &user_id, start, event);
            events_out.write_all(&line)?;
            summary.events += 1;
            if unit(&mut rng) < opts.dup_rate {
                events_out.write_all(&line)?;
                summary.duplicates += 1;
            }
        }

        // The signup is the first event simulated, always inside the horizon.
        let signup_s = events.first().map_or(0.0, |e| e.offset_s);
        subscriptions.clear();
        simulate_subscription(opts.seed, i, PLANS[plan].0, signup_s, horizon_s, &mut subscriptions);
        for (n, change) in subscriptions.iter().enumerate() {
            line.clear();
            push_subscription_line(&mut line, opts.seed, i, n, &user_id, start, change);
            events_out.write_all(&line)?;
            summary.events += 1;
        }
    }

    // BufWriter's drop ignores write errors; flushing here reports them.
    users_out.flush()?;
    events_out.flush()?;
    marketing.finish(opts)?;
    Ok(summary)
}

fn invalid_input(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// Uniform in `[0, 1)` with 53 random bits, like Python's `random.random()`.
fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Index of a value drawn from `weighted` (weights summing to 1); the last value
/// when rounding leaves the draw past the final cumulative weight.
fn pick(rng: &mut ChaCha8Rng, weighted: &[(&str, f64)]) -> usize {
    let r = unit(rng);
    let mut acc = 0.0;
    for (i, (_, weight)) in weighted.iter().enumerate() {
        acc += weight;
        if r < acc {
            return i;
        }
    }
    weighted.len() - 1
}

/// Rounds to 2 decimals. Python's `round(x, 2)` rounds the exact binary value half
/// to even; this rounds `x × 100` half away from zero. They differ only on rare
/// near-ties, which is fine since byte-identical output is not a goal.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Appends the user's events, in the order the Python emits them (not sorted by
/// time). Each `unit` call stands for one `rng.random()` of the Python, in order.
fn simulate_user(rng: &mut ChaCha8Rng, user_id: &str, channel: usize, horizon_s: f64, events: &mut Vec<Event>) {
    let (onboard_rate, return_base, buy) = CHANNEL_BEHAVIOUR[channel];
    let mut emit = |offset_s: f64, props: Props| events.push(Event { offset_s, props });

    // Signups ramp up over the range (growth); the time within the day is uniform.
    let signup_s = horizon_s * unit(rng).sqrt();
    emit(signup_s, Props::Signup { channel: CHANNELS[channel].0 });
    if unit(rng) < onboard_rate {
        emit(signup_s + 60.0 + unit(rng) * 7200.0, Props::OnboardingComplete);
    }

    // Set at the first cart from day 30 on; the user keeps that variant afterwards.
    let mut variant: Option<&'static str> = None;
    for day in 0u32.. {
        let day_start = signup_s + f64::from(day) * DAY_S;
        if day_start >= horizon_s {
            break;
        }
        // Return probability decays with the square root of the user's age in days.
        let p_active = if day == 0 { 1.0 } else { (return_base / f64::from(day).sqrt()).min(0.95) };
        if unit(rng) >= p_active {
            continue;
        }

        let mut t = day_start + if day == 0 { 0.0 } else { unit(rng) * 43_200.0 } + 120.0;
        let platform = if unit(rng) < 0.3 { "ios" } else { "web" };
        emit(t, Props::SessionStart { platform });
        let views = 1 + (unit(rng) * 4.0) as u32;
        for _ in 0..views {
            t += 5.0 + unit(rng) * 300.0;
            let item = (unit(rng) * 500.0) as u32;
            let price = round2(5.0 + unit(rng) * 95.0);
            emit(t, Props::ViewItem { item, price });
        }

        if unit(rng) >= 0.28 {
            continue;
        }
        t += 10.0 + unit(rng) * 600.0;
        emit(t, Props::AddToCart);
        let mut p_buy = 0.30 * buy;
        if t >= EXPOSURE_FROM_S && variant.is_none() {
            let assigned = if hash_bucket(EXPERIMENT, user_id) >= 0.5 { "treatment" } else { "control" };
            variant = Some(assigned);
            emit(t + 1.0, Props::Exposure { variant: assigned });
        }
        if variant == Some("treatment") {
            p_buy *= TREATMENT_LIFT;
        }

        if unit(rng) >= p_buy {
            continue;
        }
        t += 30.0 + unit(rng) * 1800.0;
        // Log-normal revenue: a Box–Muller normal draw, scaled and exponentiated.
        let u1 = unit(rng);
        let u2 = unit(rng);
        let z = (-2.0 * (1.0 - u1).ln()).sqrt() * (TAU * u2).cos();
        emit(t, Props::Purchase { revenue: round2((3.2 + 0.8 * z).exp()) });
    }
}

/// Seeds the subscription stream: independent of the main stream, so drawing from it
/// leaves every other event unchanged.
const SUBSCRIPTION_STREAM: u64 = 0x5355_4253_4352_4950; // "SUBSCRIP"
/// Monthly list prices per seat: (plan, price of the first seat, price of each extra seat).
const PAID_PLANS: [(&str, u64, u64); 2] = [("pro", 49, 29), ("enterprise", 499, 99)];
/// How often a subscriber may change: each fortnight at most once.
const CHANGE_PERIOD_S: f64 = 14.0 * DAY_S;

/// One `subscription_changed` event: the user's MRR and plan after it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Subscription {
    offset_s: f64,
    mrr: u64,
    plan: &'static str,
}

fn plan_mrr(plan: usize, seats: u64) -> u64 {
    let (_, first, extra) = PAID_PLANS[plan];
    first + extra * (seats - 1)
}

/// Appends the subscription history of user `index` on `plan` (none for a free plan): a
/// start within two weeks of signup, then per fortnight an upgrade (more seats, or pro
/// to enterprise), a downgrade (fewer seats, or enterprise to pro) or a cancellation (`mrr`
/// 0, plan `none`); a cancelled user may reactivate on the plan they left. Each change falls
/// at a random time inside its period; changes past the horizon are dropped.
fn simulate_subscription(
    seed: u64,
    index: u64,
    plan: &str,
    signup_s: f64,
    horizon_s: f64,
    out: &mut Vec<Subscription>,
) {
    let Some(mut tier) = PAID_PLANS.iter().position(|(p, _, _)| *p == plan) else {
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ SUBSCRIPTION_STREAM);
    rng.set_stream(index);
    let mut seats = 1 + (unit(&mut rng) * 3.0) as u64;
    let mut t = signup_s + unit(&mut rng) * 14.0 * DAY_S;
    let mut active = true;
    while t < horizon_s {
        let mrr = if active { plan_mrr(tier, seats) } else { 0 };
        let plan = if active { PAID_PLANS[tier].0 } else { "none" };
        out.push(Subscription { offset_s: t, mrr, plan });
        // The next change: the first fortnight with one, at most a year ahead.
        let mut next = None;
        for period in 0..26 {
            let r = unit(&mut rng);
            let at = t + f64::from(period) * CHANGE_PERIOD_S + (0.2 + 0.8 * unit(&mut rng)) * CHANGE_PERIOD_S;
            if active {
                if r < 0.12 {
                    if tier == 0 && unit(&mut rng) < 0.25 {
                        tier = 1;
                    } else {
                        seats += 1 + (unit(&mut rng) * 2.0) as u64;
                    }
                } else if r < 0.20 {
                    if seats > 1 {
                        seats -= 1;
                    } else if tier == 1 {
                        tier = 0;
                    } else {
                        continue;
                    }
                } else if r < 0.28 {
                    active = false;
                } else {
                    continue;
                }
            } else if r < 0.35 {
                active = true;
            } else {
                continue;
            }
            next = Some(at);
            break;
        }
        let Some(at) = next else { break };
        t = at;
    }
}

/// `{"user_id": "…", "traits": {"channel": "…", "country": "…", "plan": "…"}}` and a
/// newline, spaced like Python's `json.dumps`. No value here ever needs escaping.
fn push_user_line(line: &mut Vec<u8>, user_id: &str, channel: &str, country: &str, plan: &str) {
    line.extend_from_slice(b"{\"user_id\": \"");
    line.extend_from_slice(user_id.as_bytes());
    line.extend_from_slice(b"\", \"traits\": {\"channel\": \"");
    line.extend_from_slice(channel.as_bytes());
    line.extend_from_slice(b"\", \"country\": \"");
    line.extend_from_slice(country.as_bytes());
    line.extend_from_slice(b"\", \"plan\": \"");
    line.extend_from_slice(plan.as_bytes());
    line.extend_from_slice(b"\"}}\n");
}

/// One event line and its newline, keys in the Python's order, spaced like
/// `json.dumps`. No value here ever needs escaping.
fn push_event_line(line: &mut Vec<u8>, seed: u64, seq: u64, user_id: &str, start: NaiveDateTime, event: &Event) {
    line.extend_from_slice(b"{\"event_id\": \"e");
    push_u64(line, seed);
    line.push(b'_');
    push_u64(line, seq);
    line.extend_from_slice(b"\", \"name\": \"");
    line.extend_from_slice(event.props.name().as_bytes());
    line.extend_from_slice(b"\", \"user_id\": \"");
    line.extend_from_slice(user_id.as_bytes());
    line.extend_from_slice(b"\", \"timestamp\": \"");
    push_timestamp(line, start, event.offset_s);
    line.extend_from_slice(b"\", \"properties\": ");
    match event.props {
        Props::Signup { channel } => {
            line.extend_from_slice(b"{\"channel\": \"");
            line.extend_from_slice(channel.as_bytes());
            line.extend_from_slice(b"\"}");
        }
        Props::OnboardingComplete | Props::AddToCart => line.extend_from_slice(b"{}"),
        Props::SessionStart { platform } => {
            line.extend_from_slice(b"{\"platform\": \"");
            line.extend_from_slice(platform.as_bytes());
            line.extend_from_slice(b"\"}");
        }
        Props::ViewItem { item, price } => {
            line.extend_from_slice(b"{\"item\": \"sku");
            push_u64(line, u64::from(item));
            line.extend_from_slice(b"\", \"price\": ");
            push_py_float(line, price);
            line.push(b'}');
        }
        Props::Exposure { variant } => {
            line.extend_from_slice(b"{\"experiment\": \"");
            line.extend_from_slice(EXPERIMENT.as_bytes());
            line.extend_from_slice(b"\", \"variant\": \"");
            line.extend_from_slice(variant.as_bytes());
            line.extend_from_slice(b"\"}");
        }
        Props::Purchase { revenue } => {
            line.extend_from_slice(b"{\"revenue\": ");
            push_py_float(line, revenue);
            line.extend_from_slice(b", \"currency\": \"USD\"}");
        }
    }
    line.extend_from_slice(b"}\n");
}

/// A `subscription_changed` line: `{"mrr": <integer>, "plan": "…"}` as properties, id
/// `s<seed>_<user index>_<n>` (never an id of the `e<seed>_<seq>` events).
fn push_subscription_line(
    line: &mut Vec<u8>,
    seed: u64,
    index: u64,
    n: usize,
    user_id: &str,
    start: NaiveDateTime,
    change: &Subscription,
) {
    line.extend_from_slice(b"{\"event_id\": \"s");
    push_u64(line, seed);
    line.push(b'_');
    push_u64(line, index);
    line.push(b'_');
    push_u64(line, n as u64);
    line.extend_from_slice(b"\", \"name\": \"subscription_changed\", \"user_id\": \"");
    line.extend_from_slice(user_id.as_bytes());
    line.extend_from_slice(b"\", \"timestamp\": \"");
    push_timestamp(line, start, change.offset_s);
    line.extend_from_slice(b"\", \"properties\": {\"mrr\": ");
    push_u64(line, change.mrr);
    line.extend_from_slice(b", \"plan\": \"");
    line.extend_from_slice(change.plan.as_bytes());
    line.extend_from_slice(b"\"}}\n");
}

/// `start + offset_s` as `YYYY-MM-DDTHH:MM:SS.mmmZ`. Like the Python (`start +
/// timedelta(seconds=offset_s)`, then milliseconds truncated), the offset is first
/// rounded to whole microseconds, which can carry an offset just below the horizon
/// over to the next midnight; `generate` checked that the range fits four-digit years.
fn push_timestamp(line: &mut Vec<u8>, start: NaiveDateTime, offset_s: f64) {
    let micros = (offset_s * 1e6).round() as i64;
    let ts = start + TimeDelta::microseconds(micros);
    push_padded(line, ts.year() as u32, 4);
    line.push(b'-');
    push_padded(line, ts.month(), 2);
    line.push(b'-');
    push_padded(line, ts.day(), 2);
    line.push(b'T');
    push_padded(line, ts.hour(), 2);
    line.push(b':');
    push_padded(line, ts.minute(), 2);
    line.push(b':');
    push_padded(line, ts.second(), 2);
    line.push(b'.');
    push_padded(line, ts.nanosecond() / 1_000_000, 3);
    line.push(b'Z');
}

/// `n` in exactly `width` decimal digits, zero-padded.
fn push_padded(line: &mut Vec<u8>, mut n: u32, width: usize) {
    let begin = line.len();
    line.resize(begin + width, b'0');
    for slot in line[begin..].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    debug_assert_eq!(n, 0, "value wider than {width} digits");
}

/// `n` in decimal; hand-written to keep `fmt` machinery out of the per-event path.
fn push_u64(line: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut begin = digits.len();
    loop {
        begin -= 1;
        digits[begin] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    line.extend_from_slice(&digits[begin..]);
}

/// A float as Python's `repr` prints it: the shortest string that reads back as the
/// same value, with `.0` on integral values (`30.0`, `12.5`). Rust's `{:?}` does
/// exactly that inside `[1e-4, 1e16)`, where both languages use plain notation;
/// prices and revenues always fall inside (revenue ≥ 0.03: Box–Muller with 53-bit
/// draws keeps |z| < 8.6).
fn push_py_float(line: &mut Vec<u8>, x: f64) {
    debug_assert!((1e-4..1e16).contains(&x.abs()), "{x} would print differently from python");
    write!(line, "{x:?}").expect("writing to a Vec cannot fail");
}

// ---------------------------------------------------------------------------------------------
// Marketing data (SPEC §11): anonymous touches before signup, aliases, daily ad spend.
//
// Drawn from random streams of their own, seeded from (seed, user index, a constant), so adding
// them left every line of users.jsonl and events.jsonl byte-identical, and other additions to
// the main stream do not move them. Touches go to their own file for the same reason: analyses
// of events.jsonl answer as before, and `sextant load --touches` adds them.
// ---------------------------------------------------------------------------------------------

/// Share of users who visit anonymously before signing up.
const ANONYMOUS_VISITORS: f64 = 0.8;
/// Anonymous visits of such a user: 1 to this many page views.
const MAX_TOUCHES: f64 = 6.0;
/// Touches fall within this many days before signup.
const TOUCH_DAYS: f64 = 40.0;
/// Share of touches that are direct visits (no `utm_source`).
const DIRECT_VISITS: f64 = 0.2;
/// Probability that the last touch before signup is the user's acquisition channel.
const LAST_TOUCH_IS_ACQUISITION: f64 = 0.6;
/// Where earlier visits come from, whatever the acquisition channel: discovery happens on
/// social and organic search more than the channel that finally converts.
const DISCOVERY: [(&str, f64); 5] =
    [("social", 0.35), ("organic", 0.25), ("paid_search", 0.15), ("referral", 0.15), ("email", 0.10)];
const CAMPAIGNS: [&str; 3] = ["brand", "launch", "retarget"];
/// Paid channels with the spend per expected signup (a CAC before attribution).
const PAID: [(&str, f64); 2] = [("paid_search", 30.0), ("social", 18.0)];
/// Stream constants: one per kind of draw, so no two draws share a stream.
const TOUCH_STREAM: u64 = 0x746f_7563_6865_7301;
const SPEND_STREAM: u64 = 0x7370_656e_6400_0001;

/// A ChaCha stream for (seed, index, stream), independent of the main one.
fn side_rng(seed: u64, index: u64, stream: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&index.to_le_bytes());
    key[16..24].copy_from_slice(&stream.to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

/// The writers of touches.jsonl and aliases.jsonl; spend.jsonl is written at the end.
struct Marketing {
    touches: BufWriter<File>,
    aliases: BufWriter<File>,
    line: Vec<u8>,
    offsets: Vec<f64>,
}

impl Marketing {
    fn create(opts: &GenOptions) -> io::Result<Marketing> {
        Ok(Marketing {
            touches: BufWriter::with_capacity(WRITE_BUFFER, File::create(opts.out.join("touches.jsonl"))?),
            aliases: BufWriter::with_capacity(WRITE_BUFFER, File::create(opts.out.join("aliases.jsonl"))?),
            line: Vec::with_capacity(256),
            offsets: Vec::with_capacity(8),
        })
    }

    /// Writes user `index`'s anonymous visits before `signup_s` and the alias made at signup;
    /// returns the number of touches.
    fn write_user(
        &mut self,
        opts: &GenOptions,
        index: u64,
        channel: usize,
        start: NaiveDateTime,
        signup_s: f64,
    ) -> io::Result<u64> {
        let mut rng = side_rng(opts.seed, index, TOUCH_STREAM);
        if unit(&mut rng) >= ANONYMOUS_VISITORS {
            return Ok(0);
        }
        let visits = 1 + (unit(&mut rng) * MAX_TOUCHES) as usize;
        self.offsets.clear();
        // At least a minute before signup, so the alias follows every visit.
        self.offsets.extend((0..visits).map(|_| signup_s - 60.0 - unit(&mut rng) * TOUCH_DAYS * DAY_S));
        self.offsets.sort_by(f64::total_cmp);
        for (k, &offset_s) in self.offsets.iter().enumerate() {
            let last = k + 1 == visits;
            let source = if unit(&mut rng) < DIRECT_VISITS {
                None
            } else if last && unit(&mut rng) < LAST_TOUCH_IS_ACQUISITION {
                Some(CHANNELS[channel].0)
            } else {
                Some(DISCOVERY[pick(&mut rng, &DISCOVERY)].0)
            };
            let campaign = CAMPAIGNS[(unit(&mut rng) * CAMPAIGNS.len() as f64) as usize];
            let line = &mut self.line;
            line.clear();
            line.extend_from_slice(b"{\"event_id\": \"t");
            push_u64(line, opts.seed);
            line.push(b'_');
            push_u64(line, index);
            line.push(b'_');
            push_u64(line, k as u64);
            line.extend_from_slice(b"\", \"name\": \"page_view\", \"anonymous_id\": \"");
            push_anonymous_id(line, opts.seed, index);
            line.extend_from_slice(b"\", \"timestamp\": \"");
            push_timestamp(line, start, offset_s);
            line.extend_from_slice(b"\", \"properties\": {");
            if let Some(source) = source {
                line.extend_from_slice(b"\"utm_source\": \"");
                line.extend_from_slice(source.as_bytes());
                line.extend_from_slice(b"\", \"utm_campaign\": \"");
                line.extend_from_slice(source.as_bytes());
                line.push(b'_');
                line.extend_from_slice(campaign.as_bytes());
                line.extend_from_slice(b"\"");
            }
            line.extend_from_slice(b"}}\n");
            self.touches.write_all(line)?;
        }
        let line = &mut self.line;
        line.clear();
        line.extend_from_slice(b"{\"anonymous_id\": \"");
        push_anonymous_id(line, opts.seed, index);
        line.extend_from_slice(b"\", \"user_id\": \"u");
        push_u64(line, opts.seed);
        line.push(b'_');
        push_u64(line, index);
        line.extend_from_slice(b"\", \"timestamp\": \"");
        push_timestamp(line, start, signup_s);
        line.extend_from_slice(b"\"}\n");
        self.aliases.write_all(line)?;
        Ok(visits as u64)
    }

    /// Flushes the per-user files and writes spend.jsonl: per day and paid channel, the
    /// channel's expected signups that day (signup times follow a square-root ramp) times its
    /// cost per signup, with ±20% noise.
    fn finish(mut self, opts: &GenOptions) -> io::Result<()> {
        self.touches.flush()?;
        self.aliases.flush()?;
        let mut out = BufWriter::new(File::create(opts.out.join("spend.jsonl"))?);
        let mut rng = side_rng(opts.seed, u64::MAX, SPEND_STREAM);
        let days = f64::from(opts.days);
        for d in 0..opts.days {
            let date = opts.start + Days::new(u64::from(d));
            let share_of_signups = (2.0 * f64::from(d) + 1.0) / (days * days);
            for (source, cost) in PAID {
                let weight = CHANNELS.iter().find(|(c, _)| *c == source).map_or(0.0, |(_, w)| *w);
                let expected = opts.users as f64 * weight * share_of_signups;
                let amount = round2(expected * cost * (0.8 + 0.4 * unit(&mut rng)));
                writeln!(out, "{{\"date\": \"{date}\", \"utm_source\": \"{source}\", \"amount\": {amount:?}}}")?;
            }
        }
        out.flush()
    }
}

/// `a<seed>_<index>`: the anonymous id of user `u<seed>_<index>` before signup.
fn push_anonymous_id(line: &mut Vec<u8>, seed: u64, index: u64) {
    line.push(b'a');
    push_u64(line, seed);
    line.push(b'_');
    push_u64(line, index);
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::path::Path;

    use serde_json::Value;

    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let path = std::env::temp_dir().join(format!("sextant-gen-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn options(out: &Path, users: u64, seed: u64) -> GenOptions {
        GenOptions { users, seed, out: out.to_path_buf(), ..GenOptions::default() }
    }

    fn read(dir: &Path, file: &str) -> String {
        fs::read_to_string(dir.join(file)).unwrap()
    }

    fn event_line(offset_s: f64, props: Props) -> String {
        let start = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap().and_time(NaiveTime::MIN);
        let mut line = Vec::new();
        push_event_line(&mut line, 42, 3, "u42_0", start, &Event { offset_s, props });
        String::from_utf8(line).unwrap()
    }

    #[test]
    fn defaults_match_the_python() {
        let opts = GenOptions::default();
        assert_eq!(opts.users, 1000);
        assert_eq!(opts.days, 90);
        assert_eq!(opts.start, NaiveDate::from_ymd_opt(2026, 1, 1).unwrap());
        assert_eq!(opts.seed, 42);
        assert_eq!(opts.dup_rate, 0.001);
        assert_eq!(opts.out, PathBuf::from("data/gen"));
    }

    #[test]
    fn lines_are_formatted_like_python_json_dumps() {
        // Lines written by gen_events.py --users 1000 --seed 42 (u42_0's view_item),
        // and the other property shapes with the same spacing.
        assert_eq!(
            event_line(3674037.0595, Props::ViewItem { item: 14, price: 25.77 }),
            "{\"event_id\": \"e42_3\", \"name\": \"view_item\", \"user_id\": \"u42_0\", \
             \"timestamp\": \"2026-02-12T12:33:57.059Z\", \"properties\": {\"item\": \"sku14\", \"price\": 25.77}}\n"
        );
        assert_eq!(
            event_line(0.0, Props::Purchase { revenue: 30.0 }),
            "{\"event_id\": \"e42_3\", \"name\": \"purchase\", \"user_id\": \"u42_0\", \
             \"timestamp\": \"2026-01-01T00:00:00.000Z\", \"properties\": {\"revenue\": 30.0, \"currency\": \"USD\"}}\n"
        );
        assert!(event_line(0.0, Props::AddToCart).ends_with("\"properties\": {}}\n"));
        assert!(event_line(0.0, Props::Exposure { variant: "control" }).contains("\"name\": \"$exposure\", "));
        assert!(
            event_line(0.0, Props::Exposure { variant: "control" })
                .ends_with("{\"experiment\": \"checkout_v2\", \"variant\": \"control\"}}\n")
        );
        let mut line = Vec::new();
        push_user_line(&mut line, "u42_0", "social", "US", "free");
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"user_id\": \"u42_0\", \"traits\": {\"channel\": \"social\", \"country\": \"US\", \"plan\": \"free\"}}\n"
        );
    }

    #[test]
    fn timestamps_match_python() {
        // Expected strings computed with python3: fmt(start + timedelta(seconds=offset)).
        let start = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap().and_time(NaiveTime::MIN);
        let cases = [
            (0.0, "2026-01-01T00:00:00.000Z"),
            (86399.9999, "2026-01-01T23:59:59.999Z"),
            (1234567.891, "2026-01-15T06:56:07.891Z"),
            (3791385.4835, "2026-02-13T21:09:45.483Z"),
            (7775999.9999999, "2026-04-01T00:00:00.000Z"),
        ];
        for (offset, expected) in cases {
            let mut line = Vec::new();
            push_timestamp(&mut line, start, offset);
            assert_eq!(String::from_utf8(line).unwrap(), expected, "offset {offset}");
        }
    }

    #[test]
    fn floats_print_like_python_repr() {
        // Python: repr(12.5), repr(30.0), repr(round(99.999, 2)), repr(round(5.004, 2)),
        // repr(round(1234.567, 2)).
        let cases = [
            (12.5, "12.5"),
            (30.0, "30.0"),
            (round2(99.999), "100.0"),
            (round2(5.004), "5.0"),
            (round2(1234.567), "1234.57"),
            (round2(25.7749), "25.77"),
        ];
        for (x, expected) in cases {
            let mut line = Vec::new();
            push_py_float(&mut line, x);
            assert_eq!(String::from_utf8(line).unwrap(), expected);
        }
    }

    #[test]
    fn integers_print_in_decimal() {
        for n in [0, 7, 10, 42, 1_000_000, u64::MAX] {
            let mut line = Vec::new();
            push_u64(&mut line, n);
            assert_eq!(String::from_utf8(line).unwrap(), n.to_string());
        }
    }

    #[test]
    fn unit_is_in_the_unit_interval_and_uniform() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let draws: Vec<f64> = (0..100_000).map(|_| unit(&mut rng)).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let (a, b, c) = (TempDir::new("det-a"), TempDir::new("det-b"), TempDir::new("det-c"));
        let summary_a = generate(&options(&a.0, 300, 7)).unwrap();
        let summary_b = generate(&options(&b.0, 300, 7)).unwrap();
        generate(&options(&c.0, 300, 8)).unwrap();
        assert_eq!(summary_a, summary_b);
        for file in ["users.jsonl", "events.jsonl"] {
            assert_eq!(fs::read(a.0.join(file)).unwrap(), fs::read(b.0.join(file)).unwrap(), "{file}");
            assert_ne!(fs::read(a.0.join(file)).unwrap(), fs::read(c.0.join(file)).unwrap(), "{file}");
        }
    }

    #[test]
    fn sizes_match_the_python_reference() {
        // gen_events.py --users 1000 --seed 42 (python3) wrote 15,199 distinct events:
        // signup 1000, onboarding_complete 577, session_start 3363, view_item 8423,
        // add_to_cart 945, purchase 314, $exposure 577; plus 16 duplicate lines.
        let python: [(&str, f64); 7] = [
            ("signup", 1000.0),
            ("onboarding_complete", 577.0),
            ("session_start", 3363.0),
            ("view_item", 8423.0),
            ("add_to_cart", 945.0),
            ("purchase", 314.0),
            ("$exposure", 577.0),
        ];
        let dir = TempDir::new("sizes");
        generate(&options(&dir.0, 1000, 42)).unwrap();
        let mut seen = HashSet::new();
        let mut counts: HashMap<String, f64> = HashMap::new();
        for line in read(&dir.0, "events.jsonl").lines() {
            let event: Value = serde_json::from_str(line).unwrap();
            // The Python reference writes no subscriptions; they are checked below.
            if event["name"] == "subscription_changed" {
                continue;
            }
            if seen.insert(event["event_id"].as_str().unwrap().to_owned()) {
                *counts.entry(event["name"].as_str().unwrap().to_owned()).or_default() += 1.0;
            }
        }
        let total = seen.len() as f64;
        assert!((total / 15_199.0 - 1.0).abs() < 0.10, "{total} events vs python's 15199");
        assert_eq!(counts.len(), python.len(), "{counts:?}");
        for (name, expected) in python {
            let got = counts[name];
            assert!((got / expected - 1.0).abs() < 0.10, "{name}: {got} vs python's {expected}");
        }
    }

    #[test]
    fn every_line_is_json_with_the_expected_shape() {
        let dir = TempDir::new("shape");
        let opts = GenOptions { dup_rate: 0.05, ..options(&dir.0, 400, 3) };
        let summary = generate(&opts).unwrap();

        let users = read(&dir.0, "users.jsonl");
        let mut user_ids = HashSet::new();
        for (i, line) in users.lines().enumerate() {
            assert!(line.starts_with("{\"user_id\": \""), "{line}");
            let user: Value = serde_json::from_str(line).unwrap();
            let object = user.as_object().unwrap();
            assert_eq!(object.len(), 2, "{line}");
            assert_eq!(user["user_id"], format!("u3_{i}"));
            let traits = user["traits"].as_object().unwrap();
            let keys: Vec<&str> = traits.keys().map(String::as_str).collect();
            assert_eq!(keys, ["channel", "country", "plan"], "{line}");
            assert!(CHANNELS.iter().any(|(c, _)| user["traits"]["channel"] == *c), "{line}");
            assert!(COUNTRIES.iter().any(|(c, _)| user["traits"]["country"] == *c), "{line}");
            assert!(PLANS.iter().any(|(p, _)| user["traits"]["plan"] == *p), "{line}");
            user_ids.insert(user["user_id"].as_str().unwrap().to_owned());
        }
        assert_eq!(user_ids.len() as u64, summary.users);

        let start = opts.start.and_time(NaiveTime::MIN);
        let end = start + TimeDelta::days(i64::from(opts.days));
        let key_order = ["\"event_id\": ", "\"name\": ", "\"user_id\": ", "\"timestamp\": ", "\"properties\": "];
        let (mut seq, mut duplicates, mut subscriptions) = (0u64, 0u64, 0u64);
        let mut previous = "";
        for line in read(&dir.0, "events.jsonl").lines() {
            // A duplicate repeats the line just written, byte for byte.
            if line == previous {
                duplicates += 1;
                continue;
            }
            previous = line;
            if line.contains("\"name\": \"subscription_changed\"") {
                subscriptions += 1;
                continue;
            }
            seq += 1;
            let positions: Vec<usize> = key_order.iter().map(|k| line.find(k).expect(k)).collect();
            assert!(positions.is_sorted(), "key order: {line}");

            let event: Value = serde_json::from_str(line).unwrap();
            assert_eq!(event.as_object().unwrap().len(), 5, "{line}");
            assert_eq!(event["event_id"], format!("e3_{seq}"));
            assert!(user_ids.contains(event["user_id"].as_str().unwrap()), "{line}");
            let timestamp = event["timestamp"].as_str().unwrap();
            let parsed = NaiveDateTime::parse_from_str(timestamp, "%Y-%m-%dT%H:%M:%S%.3fZ").unwrap();
            assert_eq!(timestamp.len(), 24, "{line}");
            assert!(parsed >= start && parsed <= end, "{line}");

            let props = event["properties"].as_object().unwrap();
            let mut keys: Vec<&str> = props.keys().map(String::as_str).collect();
            keys.sort_unstable();
            match event["name"].as_str().unwrap() {
                "signup" => assert_eq!(keys, ["channel"]),
                "onboarding_complete" | "add_to_cart" => assert!(keys.is_empty()),
                "session_start" => {
                    assert_eq!(keys, ["platform"]);
                    assert!(props["platform"] == "ios" || props["platform"] == "web");
                }
                "view_item" => {
                    assert_eq!(keys, ["item", "price"]);
                    let item: u32 = props["item"].as_str().unwrap().strip_prefix("sku").unwrap().parse().unwrap();
                    assert!(item < 500);
                    let price = props["price"].as_f64().unwrap();
                    assert!((5.0..=100.0).contains(&price), "{line}");
                    assert_eq!(round2(price), price, "{line}");
                }
                "purchase" => {
                    assert_eq!(keys, ["currency", "revenue"]);
                    assert_eq!(props["currency"], "USD");
                    let revenue = props["revenue"].as_f64().unwrap();
                    assert!(revenue > 0.0 && round2(revenue) == revenue, "{line}");
                }
                "$exposure" => {
                    assert_eq!(keys, ["experiment", "variant"]);
                    assert_eq!(props["experiment"], "checkout_v2");
                }
                other => panic!("unexpected event name {other}"),
            }
        }
        assert_eq!(seq + subscriptions, summary.events);
        assert!(subscriptions > 0, "paid users should have subscription events");
        assert_eq!(duplicates, summary.duplicates);
        assert!(duplicates > 0, "dup_rate 0.05 should repeat some lines");
    }

    #[test]
    fn exposures_follow_hash_bucket() {
        let dir = TempDir::new("exposure");
        generate(&options(&dir.0, 2000, 11)).unwrap();
        let mut exposed = HashSet::new();
        let mut treatment = 0usize;
        for line in read(&dir.0, "events.jsonl").lines() {
            let event: Value = serde_json::from_str(line).unwrap();
            if event["name"] != "$exposure" {
                continue;
            }
            let user_id = event["user_id"].as_str().unwrap();
            let variant = event["properties"]["variant"].as_str().unwrap();
            let expected = if hash_bucket("checkout_v2", user_id) >= 0.5 { "treatment" } else { "control" };
            assert_eq!(variant, expected, "{line}");
            // Duplicate lines aside, a user is exposed once.
            if exposed.insert(user_id.to_owned()) && variant == "treatment" {
                treatment += 1;
            }
            // Exposure starts at day 30 of the range.
            assert!(event["timestamp"].as_str().unwrap() >= "2026-01-31", "{line}");
        }
        assert!(exposed.len() > 500, "only {} exposed users", exposed.len());
        let share = treatment as f64 / exposed.len() as f64;
        assert!((0.45..0.55).contains(&share), "treatment share {share}");
    }

    #[test]
    fn subscriptions_leave_every_other_line_unchanged() {
        // sha256 of events.jsonl written by `sextant gen --users 1000 --seed 42` before
        // subscriptions existed (commit 9cffa64).
        const BEFORE: &str = "78ebc69b7822f5ec1a0d7cf42cf78311d281fd2f1badc37a6f06c5dd80303d29";
        let dir = TempDir::new("unchanged");
        generate(&options(&dir.0, 1000, 42)).unwrap();
        assert_eq!(sha256_hex(events_without_subscriptions(&dir.0).as_bytes()), BEFORE);
    }

    #[test]
    fn subscriptions_move_mrr_for_paid_users_only() {
        let dir = TempDir::new("subscriptions");
        generate(&options(&dir.0, 2000, 5)).unwrap();
        let plans: HashMap<String, String> = read(&dir.0, "users.jsonl")
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .map(|u| (u["user_id"].as_str().unwrap().to_owned(), u["traits"]["plan"].as_str().unwrap().to_owned()))
            .collect();
        // Per user: (timestamp, mrr) in file order, which is time order.
        let mut history: HashMap<String, Vec<(String, u64)>> = HashMap::new();
        let mut ids = HashSet::new();
        for line in read(&dir.0, "events.jsonl").lines() {
            let event: Value = serde_json::from_str(line).unwrap();
            if event["name"] != "subscription_changed" {
                continue;
            }
            assert!(ids.insert(event["event_id"].as_str().unwrap().to_owned()), "{line}");
            let user = event["user_id"].as_str().unwrap().to_owned();
            assert_ne!(plans[&user], "free", "{line}");
            let mrr = event["properties"]["mrr"].as_u64().unwrap();
            let plan = event["properties"]["plan"].as_str().unwrap();
            assert_eq!(mrr == 0, plan == "none", "{line}");
            history.entry(user).or_default().push((event["timestamp"].as_str().unwrap().to_owned(), mrr));
        }
        let (mut up, mut down, mut cancel, mut back) = (0, 0, 0, 0);
        for changes in history.values() {
            assert!(changes.windows(2).all(|w| w[0].0 <= w[1].0), "{changes:?}");
            assert!(changes[0].1 > 0, "a history starts with a subscription: {changes:?}");
            for w in changes.windows(2) {
                match (w[0].1, w[1].1) {
                    (a, 0) if a > 0 => cancel += 1,
                    (0, b) if b > 0 => back += 1,
                    (a, b) if b > a => up += 1,
                    (a, b) if b < a => down += 1,
                    _ => {}
                }
            }
        }
        assert!(history.len() > 250, "{} subscribers", history.len());
        assert!(up > 20 && down > 10 && cancel > 20 && back > 5, "{up} {down} {cancel} {back}");
    }

    #[test]
    fn rejects_bad_options() {
        let dir = TempDir::new("bad");
        let bad_rate = GenOptions { dup_rate: 1.5, ..options(&dir.0, 10, 1) };
        assert_eq!(generate(&bad_rate).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        let nan_rate = GenOptions { dup_rate: f64::NAN, ..options(&dir.0, 10, 1) };
        assert_eq!(generate(&nan_rate).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        let late = GenOptions { start: NaiveDate::from_ymd_opt(9999, 12, 1).unwrap(), ..options(&dir.0, 10, 1) };
        assert_eq!(generate(&late).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }

    /// events.jsonl without its `subscription_changed` lines.
    fn events_without_subscriptions(dir: &std::path::Path) -> String {
        let events = read(dir, "events.jsonl");
        events.lines().filter(|l| !l.contains("\"subscription_changed\"")).map(|l| format!("{l}\n")).collect()
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn marketing_data_leaves_users_and_events_byte_identical() {
        // Digests of the files written before touches, aliases and spend existed (the
        // subscription events, drawn from streams of their own, are left out).
        let dir = TempDir::new("identical");
        generate(&options(&dir.0, 300, 7)).unwrap();
        assert_eq!(
            sha256_hex(events_without_subscriptions(&dir.0).as_bytes()),
            "433c7b99241e1bcceada00c52484fe42ce8adc6f61fa741889100b92156593d2"
        );
        assert_eq!(
            sha256_hex(read(&dir.0, "users.jsonl").as_bytes()),
            "4135c710866aad2d213512ad54abe49574e80a8455670635817140217a031253"
        );
    }

    #[test]
    fn touches_come_before_the_alias_and_spend_covers_every_day() {
        let dir = TempDir::new("marketing");
        let summary = generate(&options(&dir.0, 400, 5)).unwrap();
        let mut alias_time = std::collections::HashMap::new();
        for line in read(&dir.0, "aliases.jsonl").lines() {
            let alias: Value = serde_json::from_str(line).unwrap();
            let anonymous = alias["anonymous_id"].as_str().unwrap().to_owned();
            assert_eq!(alias["user_id"].as_str().unwrap(), format!("u5_{}", &anonymous[3..]), "{line}");
            alias_time.insert(anonymous, alias["timestamp"].as_str().unwrap().to_owned());
        }
        // Most users visit anonymously first.
        assert!((250..=390).contains(&alias_time.len()), "{} aliases", alias_time.len());
        let (mut touches, mut direct) = (0u64, 0u64);
        let mut sources = HashSet::new();
        for line in read(&dir.0, "touches.jsonl").lines() {
            let touch: Value = serde_json::from_str(line).unwrap();
            assert_eq!(touch["name"], "page_view");
            assert!(touch.get("user_id").is_none(), "{line}");
            let signup = &alias_time[touch["anonymous_id"].as_str().unwrap()];
            assert!(touch["timestamp"].as_str().unwrap() < signup.as_str(), "{line}");
            match touch["properties"]["utm_source"].as_str() {
                Some(source) => {
                    assert!(CHANNELS.iter().any(|(c, _)| *c == source), "{line}");
                    assert!(touch["properties"]["utm_campaign"].as_str().unwrap().starts_with(source));
                    sources.insert(source.to_owned());
                }
                None => direct += 1,
            }
            touches += 1;
        }
        assert_eq!(touches, summary.touches);
        assert!(direct > 0 && direct < touches / 2, "{direct} direct of {touches}");
        assert_eq!(sources.len(), CHANNELS.len());
        let spend = read(&dir.0, "spend.jsonl");
        assert_eq!(spend.lines().count(), 90 * PAID.len());
        for line in spend.lines() {
            let value: Value = serde_json::from_str(line).unwrap();
            assert!(PAID.iter().any(|(c, _)| value["utm_source"] == *c), "{line}");
            assert!(value["amount"].as_f64().unwrap() >= 0.0, "{line}");
        }
        // Deterministic per seed.
        let again = TempDir::new("marketing-again");
        generate(&options(&again.0, 400, 5)).unwrap();
        for file in ["touches.jsonl", "aliases.jsonl", "spend.jsonl"] {
            assert_eq!(read(&dir.0, file), read(&again.0, file), "{file}");
        }
    }

    #[test]
    fn zero_users_or_days_write_empty_event_files() {
        let dir = TempDir::new("empty");
        let summary = generate(&options(&dir.0, 0, 1)).unwrap();
        assert_eq!(summary, GenSummary { users: 0, events: 0, duplicates: 0, touches: 0 });
        assert_eq!(read(&dir.0, "events.jsonl"), "");
        let no_days = GenOptions { days: 0, ..options(&dir.0, 5, 1) };
        let summary = generate(&no_days).unwrap();
        assert_eq!(summary.events, 0);
        assert_eq!(read(&dir.0, "users.jsonl").lines().count(), 5);
    }

    /// `cargo test --release -- --ignored --nocapture gen_700k`: the SPEC's
    /// benchmark size, about 10 million events.
    #[test]
    #[ignore = "writes ~1.5 GB; run in release to time it"]
    fn gen_700k_users() {
        let dir = TempDir::new("700k");
        let started = std::time::Instant::now();
        let summary = generate(&options(&dir.0, 700_000, 42)).unwrap();
        let elapsed = started.elapsed();
        let bytes = fs::metadata(dir.0.join("events.jsonl")).unwrap().len();
        println!("{summary:?} in {elapsed:.2?}, events.jsonl {bytes} bytes");
        assert!(summary.events > 9_000_000, "{summary:?}");
    }
}
