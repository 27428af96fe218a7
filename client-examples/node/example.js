#!/usr/bin/env node
// Sextant from Node.js: a project, a tracking plan, events, users, a metric and a goal, a funnel,
// a retention table, an experiment readout and error handling, each step checking the values it
// gets back against numbers worked out by hand (../DATASET.md).
//
// Environment:
//   SEXTANT_ADDR     server address (default 127.0.0.1:50051)
//   SEXTANT_API_KEY  sent as `authorization: Bearer <key>` on every call
//   SEXTANT_PROJECT  project id to create (default: example-node-<unix time>)
//   SEXTANT_EXAMPLES_SKIP_UNIMPLEMENTED=1  a step whose call answers UNIMPLEMENTED (or the
//                    wrong-key check seeing OK) prints "skipped (not built yet)" instead of failing
'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const ADDR = process.env.SEXTANT_ADDR || '127.0.0.1:50051';
const API_KEY = process.env.SEXTANT_API_KEY || '';
const PROJECT = process.env.SEXTANT_PROJECT || `example-node-${Math.floor(Date.now() / 1000)}`;
const SKIP_UNIMPLEMENTED = process.env.SEXTANT_EXAMPLES_SKIP_UNIMPLEMENTED === '1';

// The stubs come from the repository's protos, loaded at start (no generated files).
const PROTO_ROOT = process.env.SEXTANT_PROTO_ROOT || path.join(__dirname, '..', '..', 'proto');
const protoFiles = fs.readdirSync(path.join(PROTO_ROOT, 'sextant', 'v1'))
  .filter((f) => f.endsWith('.proto'))
  .map((f) => `sextant/v1/${f}`);
const definition = protoLoader.loadSync(protoFiles, {
  includeDirs: [PROTO_ROOT],
  keepCase: true, // field names as in the protos: event_id, user_id, ...
  longs: Number, // uint64 counts as JS numbers
  enums: String, // enum values by name: 'GOAL_STATUS_ON_TRACK'
  defaults: true,
  oneofs: true,
});
const v1 = grpc.loadPackageDefinition(definition).sextant.v1;

// Every call carries the key; health and reflection are the only calls that need none.
function metadataFor(key) {
  const md = new grpc.Metadata();
  if (key) md.set('authorization', `Bearer ${key}`);
  return md;
}
const METADATA = metadataFor(API_KEY);

const credentials = grpc.credentials.createInsecure();
const projects = new v1.ProjectService(ADDR, credentials);
const plan = new v1.CatalogService(ADDR, credentials);
const ingester = new v1.IngestService(ADDR, credentials);
const users = new v1.UserService(ADDR, credentials);
const metrics = new v1.MetricService(ADDR, credentials);
const goals = new v1.GoalService(ADDR, credentials);
const analyses = new v1.AnalysisService(ADDR, credentials);
const experiments = new v1.ExperimentService(ADDR, credentials);

// A unary call as a promise.
function call(client, method, request, metadata = METADATA) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

// ---- helpers ---------------------------------------------------------------------------------

const ts = (text) => {
  const ms = Date.parse(text);
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 };
};
const isoOf = (t) => new Date(Number(t.seconds) * 1000 + t.nanos / 1e6).toISOString().replace('.000Z', 'Z');
const timeRange = (from, to) => ({ from: ts(from), to: ts(to) });
const value = (v) => {
  if (typeof v === 'boolean') return { bool_value: v };
  if (typeof v === 'number') return { number_value: v };
  return { string_value: v };
};
const event = (event_id, name, user_id, at, properties = {}) => ({
  event_id,
  name,
  user_id,
  timestamp: ts(at),
  properties: Object.fromEntries(Object.entries(properties).map(([k, v]) => [k, value(v)])),
});
const statusName = (code) => Object.keys(grpc.status).find((k) => grpc.status[k] === code);

class CheckFailed extends Error {}
class Skipped extends Error {}

function check(what, got, want) {
  const [g, w] = [JSON.stringify(got), JSON.stringify(want)];
  if (g !== w) throw new CheckFailed(`${what}: got ${g}, want ${w}`);
}
// Relative tolerance 1e-6 (absolute 1e-9 around 0).
function close(what, got, want, rel = 1e-6) {
  if (typeof got !== 'number' || !(Math.abs(got - want) <= Math.max(rel * Math.max(Math.abs(got), Math.abs(want)), 1e-9))) {
    throw new CheckFailed(`${what}: got ${got}, want ${want} (relative tolerance ${rel})`);
  }
}
function closeAll(what, got, want) {
  check(`${what} (length)`, got.length, want.length);
  want.forEach((w, i) => close(`${what}[${i}]`, got[i], w));
}

// ---- the steps -------------------------------------------------------------------------------

async function createProject() {
  const reply = await call(projects, 'CreateProject', { project: { id: PROJECT, name: 'Node example', timezone: 'UTC' } });
  check('project id', reply.project.id, PROJECT);
  check('project timezone', reply.project.timezone, 'UTC');
}

async function trackingPlan() {
  const types = [
    { name: 'signup', question: 'How many people sign up, from which channel?' },
    { name: 'view_item', question: 'Which items draw interest?', properties: [{ name: 'item', type: 'PROPERTY_TYPE_STRING', required: true }] },
    { name: 'purchase', question: 'How much revenue, from whom?', properties: [{ name: 'revenue', type: 'PROPERTY_TYPE_NUMBER', required: true, min: 0 }] },
    { name: 'app_open', question: 'Do users come back?' },
    { name: 'checkout', question: 'Does the new checkout convert better?' },
  ];
  for (const event_type of types) await call(plan, 'UpsertEventType', { project: PROJECT, event_type });
  const listed = await call(plan, 'ListEventTypes', { project: PROJECT });
  check('event types', listed.event_types.map((t) => t.name).sort(), ['app_open', 'checkout', 'purchase', 'signup', 'view_item']);
}

async function trackBatch() {
  const batch = [
    event('g01', 'signup', 'alice', '2026-01-05T10:00:00Z'),
    event('g02', 'view_item', 'alice', '2026-01-05T10:05:00Z', { item: 'lamp' }),
    event('g03', 'purchase', 'alice', '2026-01-05T10:20:00Z', { revenue: 30 }),
    event('g04', 'app_open', 'alice', '2026-01-05T11:00:00Z'),
    event('g-bad', '', 'alice', '2026-01-05T11:30:00Z'), // no name: rejected, the rest stored
    event('g05', 'signup', 'bob', '2026-01-05T12:00:00Z'),
    event('g06', 'view_item', 'bob', '2026-01-05T13:00:00Z', { item: 'desk' }),
    event('g07', 'purchase', 'erin', '2026-01-06T09:30:00Z', { revenue: 20 }),
  ];
  const reply = await call(ingester, 'Track', { project: PROJECT, events: batch });
  // 8 events, one bad: 7 stored, the bad one listed with its index and a message naming the field.
  check('accepted', reply.accepted, 7);
  check('duplicates', reply.duplicates, 0);
  check('rejected count', reply.rejected.length, 1);
  const bad = reply.rejected[0];
  check('rejected index', bad.index, 4);
  check('rejected event_id', bad.event_id, 'g-bad');
  check('rejected code', bad.code, 'INVALID_ARGUMENT');
  check('rejected message names the field', bad.message.startsWith('events[4].name'), true);
  console.log(`    rejected[0]: ${bad.code} ${bad.message}`);

  // The event id is the idempotency key: a retry is acknowledged, never stored twice.
  const retry = await call(ingester, 'Track', { project: PROJECT, events: [batch[2]] });
  check('retry accepted', retry.accepted, 0);
  check('retry duplicates', retry.duplicates, 1);
}

async function trackStream() {
  const batches = [
    {
      project: PROJECT, sequence: 1, events: [
        event('g08', 'signup', 'carol', '2026-01-06T08:00:00Z'),
        event('g09', 'view_item', 'carol', '2026-01-06T08:10:00Z', { item: 'lamp' }),
        event('g10', 'signup', 'dave', '2026-01-06T15:00:00Z'),
        event('g11', 'app_open', 'alice', '2026-01-06T09:00:00Z'),
      ],
    },
    {
      project: PROJECT, sequence: 2, events: [
        event('g12', 'app_open', 'alice', '2026-01-07T09:00:00Z'),
        event('g13', 'app_open', 'bob', '2026-01-07T11:00:00Z'),
        event('g14', 'purchase', 'bob', '2026-01-07T11:30:00Z', { revenue: 55 }),
        event('g15', 'app_open', 'carol', '2026-01-07T18:00:00Z'),
        event('g16', 'purchase', 'dave', '2026-01-08T10:00:00Z', { revenue: 35 }),
      ],
    },
  ];
  const acks = await new Promise((resolve, reject) => {
    const stream = ingester.TrackStream(METADATA);
    const got = [];
    stream.on('data', (ack) => got.push([ack.sequence, ack.accepted, ack.rejected.length]));
    stream.on('error', reject);
    stream.on('end', () => resolve(got));
    for (const b of batches) stream.write(b);
    stream.end(); // half-close: the server acks every batch it received, then ends
  });
  // One ack per batch, in order, echoing its sequence: 4 then 5 events stored.
  check('stream acks [sequence, accepted, rejected]', acks, [[1, 4, 0], [2, 5, 0]]);
}

async function identifyUsers() {
  const traits = {
    alice: { channel: 'ads', plan: 'pro' }, bob: { channel: 'organic' }, carol: { channel: 'ads' },
    dave: { channel: 'organic' }, erin: { channel: 'ads' },
  };
  const updates = Object.entries(traits).map(([user_id, t]) => ({
    user_id, set: Object.fromEntries(Object.entries(t).map(([k, v]) => [k, value(v)])),
  }));
  const reply = await call(ingester, 'Identify', { project: PROJECT, users: updates });
  check('updated', reply.updated, 5);
  const alice = (await call(users, 'GetUser', { project: PROJECT, user_id: 'alice' })).user;
  const aliceTraits = Object.fromEntries(Object.entries(alice.traits).map(([k, v]) => [k, v.string_value]));
  check('alice traits', Object.fromEntries(Object.entries(aliceTraits).sort()), { channel: 'ads', plan: 'pro' });
  // g01-g04, g11, g12 (g-bad was rejected).
  check('alice events', alice.events, 6);
  check('alice first seen', isoOf(alice.first_seen), '2026-01-05T10:00:00Z');
  check('alice last seen', isoOf(alice.last_seen), '2026-01-07T09:00:00Z');
}

async function metricAndGoal() {
  await call(metrics, 'CreateMetric', {
    project: PROJECT,
    metric: { key: 'revenue', name: 'Revenue', kind: 'METRIC_KIND_SUM', property: 'revenue', selector: { event: 'purchase' }, unit: 'USD' },
  });
  const range = timeRange('2026-01-05T00:00:00Z', '2026-01-09T00:00:00Z');
  const daily = await call(metrics, 'QueryMetric', { project: PROJECT, metric_key: 'revenue', granularity: 'GRANULARITY_DAY', range });
  // Purchases: 01-05 alice 30, 01-06 erin 20, 01-07 bob 55, 01-08 dave 35.
  closeAll('daily revenue', daily.series[0].points.map((p) => p.value), [30, 20, 55, 35]);

  const byChannel = await call(metrics, 'QueryMetric', {
    project: PROJECT, metric_key: 'revenue', granularity: 'GRANULARITY_TOTAL', breakdown: 'user.channel', range,
  });
  // organic = bob 55 + dave 35 = 90; ads = alice 30 + erin 20 = 50; ordered by total, descending.
  check('revenue by channel', byChannel.series.map((s) => [s.breakdown_value, s.points[0].value]), [['organic', 90], ['ads', 50]]);

  await call(goals, 'CreateGoal', {
    project: PROJECT,
    goal: {
      id: 'revenue-growth', name: '+20% revenue', metric_key: 'revenue', granularity: 'GRANULARITY_DAY',
      period: timeRange('2026-01-07T00:00:00Z', '2026-01-09T00:00:00Z'), relative_target: 0.2,
    },
  });
  const progress = await call(goals, 'GetGoalProgress', { project: PROJECT, id: 'revenue-growth', as_of: ts('2026-01-08T00:00:00Z') });
  // SUM is additive. Baseline: [01-05, 01-07) = 30 + 20 = 50; target 50 × 1.2 = 60; current:
  // [01-07, 01-08) = 55; progress 55/60 (additive: current / target); expected 24 h/48 h = 0.5;
  // projected 55 × 48/24 = 110 ≥ 60 → ON_TRACK.
  close('baseline', progress.baseline, 50);
  close('target', progress.target, 60);
  close('current', progress.current, 55);
  close('progress', progress.progress, 55 / 60);
  close('expected progress', progress.expected_progress, 0.5);
  close('projected', progress.projected, 110);
  check('status', progress.status, 'GOAL_STATUS_ON_TRACK');
}

async function funnel() {
  const reply = await call(analyses, 'QueryFunnel', {
    project: PROJECT,
    steps: ['signup', 'view_item', 'purchase'].map((e) => ({ event: e })),
    range: timeRange('2026-01-05T00:00:00Z', '2026-01-08T00:00:00Z'),
    window: { seconds: 14 * 86400 },
    order: 'FUNNEL_ORDER_ORDERED',
    breakdown: 'user.channel',
  });
  // alice: signup → +300 s view → +900 s purchase; bob: +3600 s, +167400 s (01-05 13:00 → 01-07
  // 11:30); carol: +600 s, no purchase; dave: signup only. Users 4, 3, 2.
  const steps = reply.steps;
  check('users', steps.map((s) => s.users), [4, 3, 2]);
  closeAll('conversion from previous', steps.map((s) => s.conversion_from_previous), [1, 0.75, 2 / 3]);
  closeAll('conversion from start', steps.map((s) => s.conversion_from_start), [1, 0.75, 0.5]);
  // Step 2: 300, 600, 3600 → median 600, mean 1500. Step 3: 900, 167400 → median = mean = 84150.
  closeAll('median seconds', steps.map((s) => s.median_seconds_from_previous), [0, 600, 84150]);
  closeAll('mean seconds', steps.map((s) => s.mean_seconds_from_previous), [0, 1500, 84150]);
  // ads = alice (3 steps), carol (2); organic = bob (3), dave (1).
  const byChannel = Object.fromEntries(reply.breakdowns.map((b) => [b.value, b.steps.map((s) => s.users)]).sort());
  check('by channel', byChannel, { ads: [2, 2, 1], organic: [2, 1, 1] });
}

async function retention() {
  const reply = await call(analyses, 'QueryRetention', {
    project: PROJECT,
    cohort_event: { event: 'signup' },
    return_event: { event: 'app_open' },
    first_time: true,
    period: 'PERIOD_DAY',
    periods: 3,
    range: timeRange('2026-01-05T00:00:00Z', '2026-01-07T00:00:00Z'),
  });
  const rows = reply.cohorts.map((c) => [isoOf(c.start), c.size, c.retained, c.complete]);
  // 01-05: alice, bob; day 0 alice (11:00), day 1 alice, day 2 alice + bob.
  // 01-06: carol, dave; day 1 carol.
  check('cohorts', rows, [
    ['2026-01-05T00:00:00Z', 2, [1, 1, 2], [true, true, true]],
    ['2026-01-06T00:00:00Z', 2, [0, 1, 0], [true, true, true]],
  ]);
  closeAll('shares 01-05', reply.cohorts[0].shares, [0.5, 0.5, 1]);
  closeAll('shares 01-06', reply.cohorts[1].shares, [0, 0.5, 0]);
  // Weighted by size: (1 + 0)/4, (1 + 1)/4, (2 + 0)/4.
  closeAll('average shares', reply.average_shares, [0.25, 0.5, 0.5]);
}

// Users of the experiment, their buckets (SPEC §8: fnv1a32(decimal(fnv1a32("checkout-v2" + id)))
// mod 10000 / 10000) and variants (control [0, 0.5), treatment [0.5, 1)).
const ASSIGNMENTS = [
  ['x01', 0.8097, 'treatment'], ['x02', 0.9913, 'treatment'], ['x03', 0.5664, 'treatment'],
  ['x04', 0.6499, 'treatment'], ['x05', 0.2617, 'control'], ['x06', 0.6742, 'treatment'],
  ['x07', 0.0252, 'control'], ['x08', 0.8244, 'treatment'], ['x09', 0.1513, 'control'],
  ['x10', 0.3149, 'control'], ['x11', 0.3662, 'control'],
];

async function experimentReadout() {
  for (const [key, kind] of [['checkout_users', 'METRIC_KIND_UNIQUE_USERS'], ['checkouts', 'METRIC_KIND_COUNT']]) {
    await call(metrics, 'CreateMetric', { project: PROJECT, metric: { key, kind, selector: { event: 'checkout' } } });
  }
  await call(experiments, 'CreateExperiment', {
    project: PROJECT,
    experiment: {
      key: 'checkout-v2', name: 'One-page checkout',
      variants: [{ key: 'control', weight: 0.5 }, { key: 'treatment', weight: 0.5 }],
      primary_metric_keys: ['checkout_users'], secondary_metric_keys: ['checkouts'],
      // Backfilled: the window is set here, so StartExperiment keeps it.
      start_time: ts('2026-01-12T00:00:00Z'), end_time: ts('2026-01-19T00:00:00Z'),
    },
  });
  const started = await call(experiments, 'StartExperiment', { project: PROJECT, experiment_key: 'checkout-v2' });
  check('status', started.experiment.status, 'EXPERIMENT_STATUS_RUNNING');

  const exposures = [];
  for (const [i, [uid, bucket, variant]] of ASSIGNMENTS.entries()) {
    const got = await call(experiments, 'Assign', { project: PROJECT, experiment_key: 'checkout-v2', user_id: uid });
    check(`${uid} variant`, [got.variant, got.in_experiment], [variant, true]);
    close(`${uid} bucket`, got.bucket, bucket);
    const minute = String(i + 1).padStart(2, '0');
    exposures.push({
      event_id: `exp-${uid}`, user_id: uid, experiment_key: 'checkout-v2', variant: got.variant,
      timestamp: ts(`2026-01-12T10:${minute}:00Z`),
    });
  }
  const logged = await call(experiments, 'LogExposures', { project: PROJECT, exposures });
  check('exposures accepted', [logged.accepted, logged.rejected.length], [11, 0]);

  const checkouts = [
    event('c01', 'checkout', 'x09', '2026-01-12T09:00:00Z'), // before x09's exposure: not counted
    event('c02', 'checkout', 'x05', '2026-01-13T12:00:00Z'),
    event('c03', 'checkout', 'x07', '2026-01-13T12:10:00Z'),
    event('c04', 'checkout', 'x01', '2026-01-13T12:20:00Z'),
    event('c05', 'checkout', 'x01', '2026-01-13T15:00:00Z'),
    event('c06', 'checkout', 'x02', '2026-01-13T12:30:00Z'),
    event('c07', 'checkout', 'x03', '2026-01-13T12:40:00Z'),
    event('c08', 'checkout', 'x04', '2026-01-13T12:50:00Z'),
    event('c09', 'checkout', 'x08', '2026-01-13T13:00:00Z'),
    // x08 also saw control (an exposure sent as an event): it is left out of the readout.
    event('c10', '$exposure', 'x08', '2026-01-12T10:30:00Z', { experiment: 'checkout-v2', variant: 'control' }),
  ];
  const tracked = await call(ingester, 'Track', { project: PROJECT, events: checkouts });
  check('checkouts accepted', tracked.accepted, 10);

  const results = await call(experiments, 'GetExperimentResults', { project: PROJECT, experiment_key: 'checkout-v2' });
  // 5 users per variant after excluding x08 → chi-square 0, SRM p = 1.
  check('excluded users', results.excluded_users, 1);
  check('variant users', results.variant_users, [5, 5]);
  close('srm p-value', results.srm_p_value, 1.0);
  check('metrics', results.metrics.map((m) => [m.metric_key, m.summary_type]),
    [['checkout_users', 'SUMMARY_TYPE_PROPORTION'], ['checkouts', 'SUMMARY_TYPE_MEAN']]);

  // checkout_users: control 2/5 = 0.4 (x05, x07; x09's checkout precedes its exposure),
  // treatment 4/5 = 0.8. Variant CIs p ± 1.959964·sqrt(p(1−p)/5). Relative effect
  // (0.8 − 0.4)/0.4 = 1, var 0.16/(5·0.16) + 0.24·0.64/(5·0.0256) = 1.4; Welch ν =
  // 0.08²/(0.048²/4 + 0.032²/4) = 7.6923077; t = 1/sqrt(1.4); p = 2·t.sf(t, ν) (scipy).
  const proportion = results.metrics[0];
  check('checkout_users users', proportion.variants.map((v) => v.users), [5, 5]);
  closeAll('checkout_users means', proportion.variants.map((v) => v.mean), [0.4, 0.8]);
  closeAll('checkout_users control CI', [proportion.variants[0].ci_lower, proportion.variants[0].ci_upper],
    [-0.029406594492117688, 0.8294065944921177]);
  closeAll('checkout_users treatment CI', [proportion.variants[1].ci_lower, proportion.variants[1].ci_upper],
    [0.4493909837693674, 1.1506090162306326]);
  let c = proportion.comparisons[0];
  check('comparison variant', c.variant, 'treatment');
  close('relative effect', c.effect, 1.0);
  close('p-value', c.p_value, 0.42353078747464695);
  closeAll('effect CI', [c.ci_lower, c.ci_upper], [-1.7476154340513892, 3.747615434051389]);
  check('significant', c.significant, false);

  // checkouts: control 1,1,0,0,0 (mean 0.4, σ² 0.3), treatment 2,1,1,1,0 (mean 1, σ² 0.5).
  // Relative effect 1.5, var 0.5/(5·0.16) + 0.3/(5·0.0256) = 2.96875, ν = 7.5294118.
  const mean = results.metrics[1];
  closeAll('checkouts means', mean.variants.map((v) => v.mean), [0.4, 1.0]);
  closeAll('checkouts sums', mean.variants.map((v) => v.summary.sum), [2, 5]);
  closeAll('checkouts sums of squares', mean.variants.map((v) => v.summary.sum_squares), [2, 7]);
  c = mean.comparisons[0];
  close('relative effect', c.effect, 1.5);
  close('p-value', c.p_value, 0.4108831054031287);
  closeAll('effect CI', [c.ci_lower, c.ci_upper], [-2.5169020330767378, 5.516902033076738]);

  // Nothing significant, no SRM, end time in the past (so not KEEP_RUNNING).
  check('decision', results.decision, 'DECISION_INCONCLUSIVE');
}

async function wrongApiKey() {
  if (!API_KEY) throw new Skipped('no SEXTANT_API_KEY: a server started without SEXTANT_BOOTSTRAP_KEY accepts any key');
  try {
    await call(projects, 'GetProject', { project: PROJECT }, metadataFor('not-the-key'));
  } catch (err) {
    if (err.code === undefined) throw err;
    check('status code', statusName(err.code), 'UNAUTHENTICATED');
    console.log(`    ${statusName(err.code)}: ${err.details}`);
    return;
  }
  if (SKIP_UNIMPLEMENTED) throw new Skipped('not built yet: the server accepted a wrong key');
  throw new CheckFailed('a call with a wrong API key succeeded, want UNAUTHENTICATED');
}

const STEPS = [
  ['create a project', createProject],
  ['define the tracking plan', trackingPlan],
  ['track a batch (one bad event, one retry)', trackBatch],
  ['track over a stream', trackStream],
  ['identify users', identifyUsers],
  ['define a metric and a goal, read progress', metricAndGoal],
  ['query a funnel', funnel],
  ['query retention', retention],
  ['read an experiment readout', experimentReadout],
  ['call with a wrong API key', wrongApiKey],
];

async function main() {
  console.log(`Sextant at ${ADDR}, project ${PROJECT}`);
  let [passed, failed, skipped] = [0, 0, 0];
  for (const [name, step] of STEPS) {
    console.log(`== ${name}`);
    try {
      await step();
      passed += 1;
      console.log('   ok');
    } catch (err) {
      if (err instanceof Skipped) {
        skipped += 1;
        console.log(`   skipped (${err.message})`);
      } else if (err.code === grpc.status.UNIMPLEMENTED && SKIP_UNIMPLEMENTED) {
        skipped += 1;
        console.log('   skipped (not built yet)');
      } else if (err.code !== undefined) {
        failed += 1;
        console.log(`   FAIL: ${statusName(err.code)}: ${err.details}`);
      } else if (err instanceof CheckFailed) {
        failed += 1;
        console.log(`   FAIL: ${err.message}`);
      } else {
        throw err; // a bug in the example itself
      }
    }
  }
  console.log(`node: ${passed} passed, ${failed} failed, ${skipped} skipped`);
  process.exit(failed ? 1 : 0);
}

main().catch((err) => {
  console.error(err);
  process.exit(2);
});
