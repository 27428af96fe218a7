// Sextant from Go: a project, a tracking plan, events, users, a metric and a goal, a funnel, a
// retention table, an experiment readout and error handling, each step checking the values it
// gets back against numbers worked out by hand (../DATASET.md).
//
// Environment:
//
//	SEXTANT_ADDR     server address (default 127.0.0.1:50051)
//	SEXTANT_API_KEY  sent as `authorization: Bearer <key>` on every call
//	SEXTANT_PROJECT  project id to create (default: example-go-<unix time>)
//	SEXTANT_EXAMPLES_SKIP_UNIMPLEMENTED=1  a step whose call answers UNIMPLEMENTED (or the
//	                 wrong-key check seeing OK) prints "skipped (not built yet)" instead of failing
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"reflect"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "sextantexample/sextantv1"
)

var (
	addr              = envOr("SEXTANT_ADDR", "127.0.0.1:50051")
	apiKey            = os.Getenv("SEXTANT_API_KEY")
	project           = envOr("SEXTANT_PROJECT", fmt.Sprintf("example-go-%d", time.Now().Unix()))
	skipUnimplemented = os.Getenv("SEXTANT_EXAMPLES_SKIP_UNIMPLEMENTED") == "1"
)

// Clients, and the context every call uses: it carries the key (health and reflection are the
// only calls that need none).
var (
	ctx         context.Context
	projects    pb.ProjectServiceClient
	plan        pb.CatalogServiceClient
	ingester    pb.IngestServiceClient
	users       pb.UserServiceClient
	metrics     pb.MetricServiceClient
	goals       pb.GoalServiceClient
	analyses    pb.AnalysisServiceClient
	experiments pb.ExperimentServiceClient
)

func withKey(parent context.Context, key string) context.Context {
	if key == "" {
		return parent
	}
	return metadata.AppendToOutgoingContext(parent, "authorization", "Bearer "+key)
}

// ---- helpers ---------------------------------------------------------------------------------

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func ts(text string) *timestamppb.Timestamp {
	t, err := time.Parse(time.RFC3339, text)
	if err != nil {
		panic(err)
	}
	return timestamppb.New(t)
}

func iso(t *timestamppb.Timestamp) string { return t.AsTime().UTC().Format(time.RFC3339) }

func timeRange(from, to string) *pb.TimeRange { return &pb.TimeRange{From: ts(from), To: ts(to)} }

func str(v string) *pb.Value  { return &pb.Value{Kind: &pb.Value_StringValue{StringValue: v}} }
func num(v float64) *pb.Value { return &pb.Value{Kind: &pb.Value_NumberValue{NumberValue: v}} }

func event(id, name, user, at string, props map[string]*pb.Value) *pb.Event {
	return &pb.Event{EventId: id, Name: name, UserId: user, Timestamp: ts(at), Properties: props}
}

type checkFailed struct{ msg string }

func (e checkFailed) Error() string { return e.msg }

type skipped struct{ why string }

func (e skipped) Error() string { return e.why }

// check and close panic with checkFailed; the step runner recovers it.
func check(what string, got, want interface{}) {
	if !reflect.DeepEqual(got, want) {
		panic(checkFailed{fmt.Sprintf("%s: got %v, want %v", what, got, want)})
	}
}

// Relative tolerance 1e-6 (absolute 1e-9 around 0).
func closeTo(what string, got, want float64) {
	if math.Abs(got-want) > math.Max(1e-6*math.Max(math.Abs(got), math.Abs(want)), 1e-9) || math.IsNaN(got) {
		panic(checkFailed{fmt.Sprintf("%s: got %v, want %v (relative tolerance 1e-6)", what, got, want)})
	}
}

func closeAll(what string, got, want []float64) {
	check(what+" (length)", len(got), len(want))
	for i := range want {
		closeTo(fmt.Sprintf("%s[%d]", what, i), got[i], want[i])
	}
}

// present returns an optional double, failing the check when the server left it unset.
func present(what string, v *float64) float64 {
	if v == nil {
		panic(checkFailed{what + ": unset"})
	}
	return *v
}

// must fails the step on an RPC error (the runner tells UNIMPLEMENTED apart).
func must(err error) {
	if err != nil {
		panic(err)
	}
}

// ---- the steps -------------------------------------------------------------------------------

func createProject() {
	reply, err := projects.CreateProject(ctx, &pb.CreateProjectRequest{
		Project: &pb.Project{Id: project, Name: "Go example", Timezone: "UTC"}})
	must(err)
	check("project id", reply.Project.Id, project)
	check("project timezone", reply.Project.Timezone, "UTC")
}

func trackingPlan() {
	types := []*pb.EventType{
		{Name: "signup", Question: "How many people sign up, from which channel?"},
		{Name: "view_item", Question: "Which items draw interest?", Properties: []*pb.PropertySchema{
			{Name: "item", Type: pb.PropertyType_PROPERTY_TYPE_STRING, Required: true}}},
		{Name: "purchase", Question: "How much revenue, from whom?", Properties: []*pb.PropertySchema{
			{Name: "revenue", Type: pb.PropertyType_PROPERTY_TYPE_NUMBER, Required: true, Min: proto.Float64(0)}}},
		{Name: "app_open", Question: "Do users come back?"},
		{Name: "checkout", Question: "Does the new checkout convert better?"},
	}
	for _, t := range types {
		_, err := plan.UpsertEventType(ctx, &pb.UpsertEventTypeRequest{Project: project, EventType: t})
		must(err)
	}
	listed, err := plan.ListEventTypes(ctx, &pb.ListEventTypesRequest{Project: project})
	must(err)
	var names []string
	for _, t := range listed.EventTypes {
		names = append(names, t.Name)
	}
	sort.Strings(names)
	check("event types", names, []string{"app_open", "checkout", "purchase", "signup", "view_item"})
}

func trackBatch() {
	batch := []*pb.Event{
		event("g01", "signup", "alice", "2026-01-05T10:00:00Z", nil),
		event("g02", "view_item", "alice", "2026-01-05T10:05:00Z", map[string]*pb.Value{"item": str("lamp")}),
		event("g03", "purchase", "alice", "2026-01-05T10:20:00Z", map[string]*pb.Value{"revenue": num(30)}),
		event("g04", "app_open", "alice", "2026-01-05T11:00:00Z", nil),
		event("g-bad", "", "alice", "2026-01-05T11:30:00Z", nil), // no name: rejected, the rest stored
		event("g05", "signup", "bob", "2026-01-05T12:00:00Z", nil),
		event("g06", "view_item", "bob", "2026-01-05T13:00:00Z", map[string]*pb.Value{"item": str("desk")}),
		event("g07", "purchase", "erin", "2026-01-06T09:30:00Z", map[string]*pb.Value{"revenue": num(20)}),
	}
	reply, err := ingester.Track(ctx, &pb.TrackRequest{Project: project, Events: batch})
	must(err)
	// 8 events, one bad: 7 stored, the bad one listed with its index and a message naming the field.
	check("accepted", reply.Accepted, uint64(7))
	check("duplicates", reply.Duplicates, uint64(0))
	check("rejected count", len(reply.Rejected), 1)
	bad := reply.Rejected[0]
	check("rejected index", bad.Index, uint32(4))
	check("rejected event_id", bad.EventId, "g-bad")
	check("rejected code", bad.Code, "INVALID_ARGUMENT")
	check("rejected message names the field", strings.HasPrefix(bad.Message, "events[4].name"), true)
	fmt.Printf("    rejected[0]: %s %s\n", bad.Code, bad.Message)

	// The event id is the idempotency key: a retry is acknowledged, never stored twice.
	retry, err := ingester.Track(ctx, &pb.TrackRequest{Project: project, Events: batch[2:3]})
	must(err)
	check("retry accepted", retry.Accepted, uint64(0))
	check("retry duplicates", retry.Duplicates, uint64(1))
}

func trackStream() {
	batches := []*pb.TrackRequest{
		{Project: project, Sequence: 1, Events: []*pb.Event{
			event("g08", "signup", "carol", "2026-01-06T08:00:00Z", nil),
			event("g09", "view_item", "carol", "2026-01-06T08:10:00Z", map[string]*pb.Value{"item": str("lamp")}),
			event("g10", "signup", "dave", "2026-01-06T15:00:00Z", nil),
			event("g11", "app_open", "alice", "2026-01-06T09:00:00Z", nil),
		}},
		{Project: project, Sequence: 2, Events: []*pb.Event{
			event("g12", "app_open", "alice", "2026-01-07T09:00:00Z", nil),
			event("g13", "app_open", "bob", "2026-01-07T11:00:00Z", nil),
			event("g14", "purchase", "bob", "2026-01-07T11:30:00Z", map[string]*pb.Value{"revenue": num(55)}),
			event("g15", "app_open", "carol", "2026-01-07T18:00:00Z", nil),
			event("g16", "purchase", "dave", "2026-01-08T10:00:00Z", map[string]*pb.Value{"revenue": num(35)}),
		}},
	}
	stream, err := ingester.TrackStream(ctx)
	must(err)
	for _, b := range batches {
		must(stream.Send(b))
	}
	must(stream.CloseSend()) // half-close: the server acks every batch it received, then ends
	var acks [][3]uint64
	for {
		ack, err := stream.Recv()
		if err == io.EOF {
			break
		}
		must(err)
		acks = append(acks, [3]uint64{ack.Sequence, ack.Accepted, uint64(len(ack.Rejected))})
	}
	// One ack per batch, in order, echoing its sequence: 4 then 5 events stored.
	check("stream acks [sequence, accepted, rejected]", acks, [][3]uint64{{1, 4, 0}, {2, 5, 0}})
}

func identifyUsers() {
	updates := []*pb.UserUpdate{
		{UserId: "alice", Set: map[string]*pb.Value{"channel": str("ads"), "plan": str("pro")}},
		{UserId: "bob", Set: map[string]*pb.Value{"channel": str("organic")}},
		{UserId: "carol", Set: map[string]*pb.Value{"channel": str("ads")}},
		{UserId: "dave", Set: map[string]*pb.Value{"channel": str("organic")}},
		{UserId: "erin", Set: map[string]*pb.Value{"channel": str("ads")}},
	}
	reply, err := ingester.Identify(ctx, &pb.IdentifyRequest{Project: project, Users: updates})
	must(err)
	check("updated", reply.Updated, uint64(5))
	got, err := users.GetUser(ctx, &pb.GetUserRequest{Project: project, UserId: "alice"})
	must(err)
	alice := got.User
	traits := map[string]string{}
	for k, v := range alice.Traits {
		traits[k] = v.GetStringValue()
	}
	check("alice traits", traits, map[string]string{"channel": "ads", "plan": "pro"})
	// g01-g04, g11, g12 (g-bad was rejected).
	check("alice events", alice.Events, uint64(6))
	check("alice first seen", iso(alice.FirstSeen), "2026-01-05T10:00:00Z")
	check("alice last seen", iso(alice.LastSeen), "2026-01-07T09:00:00Z")
}

func metricAndGoal() {
	_, err := metrics.CreateMetric(ctx, &pb.CreateMetricRequest{Project: project, Metric: &pb.MetricDefinition{
		Key: "revenue", Name: "Revenue", Kind: pb.MetricKind_METRIC_KIND_SUM, Property: "revenue",
		Selector: &pb.EventSelector{Event: "purchase"}, Unit: "USD"}})
	must(err)
	span := timeRange("2026-01-05T00:00:00Z", "2026-01-09T00:00:00Z")
	daily, err := metrics.QueryMetric(ctx, &pb.QueryMetricRequest{Project: project,
		Metric: &pb.QueryMetricRequest_MetricKey{MetricKey: "revenue"}, Range: span, Granularity: pb.Granularity_GRANULARITY_DAY})
	must(err)
	var values []float64
	for _, p := range daily.Series[0].Points {
		values = append(values, p.Value)
	}
	// Purchases: 01-05 alice 30, 01-06 erin 20, 01-07 bob 55, 01-08 dave 35.
	closeAll("daily revenue", values, []float64{30, 20, 55, 35})

	byChannel, err := metrics.QueryMetric(ctx, &pb.QueryMetricRequest{Project: project,
		Metric: &pb.QueryMetricRequest_MetricKey{MetricKey: "revenue"}, Range: span,
		Granularity: pb.Granularity_GRANULARITY_TOTAL, Breakdown: "user.channel"})
	must(err)
	var split []string
	for _, s := range byChannel.Series {
		split = append(split, fmt.Sprintf("%s=%g", s.BreakdownValue, s.Points[0].Value))
	}
	// organic = bob 55 + dave 35 = 90; ads = alice 30 + erin 20 = 50; ordered by total, descending.
	check("revenue by channel", split, []string{"organic=90", "ads=50"})

	_, err = goals.CreateGoal(ctx, &pb.CreateGoalRequest{Project: project, Goal: &pb.Goal{
		Id: "revenue-growth", Name: "+20% revenue", MetricKey: "revenue", Granularity: pb.Granularity_GRANULARITY_DAY,
		Period: timeRange("2026-01-07T00:00:00Z", "2026-01-09T00:00:00Z"),
		Target: &pb.Goal_RelativeTarget{RelativeTarget: 0.2}}})
	must(err)
	progress, err := goals.GetGoalProgress(ctx, &pb.GetGoalProgressRequest{Project: project, Id: "revenue-growth",
		AsOf: ts("2026-01-08T00:00:00Z")})
	must(err)
	// SUM is additive. Baseline: [01-05, 01-07) = 30 + 20 = 50; target 50 × 1.2 = 60; current:
	// [01-07, 01-08) = 55; progress 55/60 (additive: current / target); expected 24 h/48 h = 0.5;
	// projected 55 × 48/24 = 110 ≥ 60 → ON_TRACK.
	closeTo("baseline", present("baseline", progress.Baseline), 50)
	closeTo("target", present("target", progress.Target), 60)
	closeTo("current", present("current", progress.Current), 55)
	closeTo("progress", present("progress", progress.Progress), 55.0/60.0)
	closeTo("expected progress", progress.ExpectedProgress, 0.5)
	closeTo("projected", present("projected", progress.Projected), 110)
	check("status", progress.Status.String(), "GOAL_STATUS_ON_TRACK")
}

func funnel() {
	reply, err := analyses.QueryFunnel(ctx, &pb.QueryFunnelRequest{
		Project: project,
		Steps:   []*pb.EventSelector{{Event: "signup"}, {Event: "view_item"}, {Event: "purchase"}},
		Range:   timeRange("2026-01-05T00:00:00Z", "2026-01-08T00:00:00Z"),
		Window:  durationpb.New(14 * 24 * time.Hour), Order: pb.FunnelOrder_FUNNEL_ORDER_ORDERED,
		Breakdown: "user.channel",
	})
	must(err)
	var usersPerStep []uint64
	var fromPrevious, fromStart, medians, means []float64
	for _, s := range reply.Steps {
		usersPerStep = append(usersPerStep, s.Users)
		fromPrevious = append(fromPrevious, s.ConversionFromPrevious)
		fromStart = append(fromStart, s.ConversionFromStart)
		medians = append(medians, s.MedianSecondsFromPrevious)
		means = append(means, s.MeanSecondsFromPrevious)
	}
	// alice: signup → +300 s view → +900 s purchase; bob: +3600 s, +167400 s (01-05 13:00 → 01-07
	// 11:30); carol: +600 s, no purchase; dave: signup only. Users 4, 3, 2.
	check("users", usersPerStep, []uint64{4, 3, 2})
	closeAll("conversion from previous", fromPrevious, []float64{1, 0.75, 2.0 / 3})
	closeAll("conversion from start", fromStart, []float64{1, 0.75, 0.5})
	// Step 2: 300, 600, 3600 → median 600, mean 1500. Step 3: 900, 167400 → median = mean = 84150.
	closeAll("median seconds", medians, []float64{0, 600, 84150})
	closeAll("mean seconds", means, []float64{0, 1500, 84150})
	byChannel := map[string][]uint64{}
	for _, b := range reply.Breakdowns {
		for _, s := range b.Steps {
			byChannel[b.Value] = append(byChannel[b.Value], s.Users)
		}
	}
	// ads = alice (3 steps), carol (2); organic = bob (3), dave (1).
	check("by channel", byChannel, map[string][]uint64{"ads": {2, 2, 1}, "organic": {2, 1, 1}})
}

func retention() {
	reply, err := analyses.QueryRetention(ctx, &pb.QueryRetentionRequest{
		Project:     project,
		CohortEvent: &pb.EventSelector{Event: "signup"}, ReturnEvent: &pb.EventSelector{Event: "app_open"},
		FirstTime: true, Period: pb.Period_PERIOD_DAY, Periods: 3,
		Range: timeRange("2026-01-05T00:00:00Z", "2026-01-07T00:00:00Z"),
	})
	must(err)
	var rows []string
	for _, c := range reply.Cohorts {
		rows = append(rows, fmt.Sprintf("%s size=%d retained=%v complete=%v", iso(c.Start), c.Size, c.Retained, c.Complete))
	}
	// 01-05: alice, bob; day 0 alice (11:00), day 1 alice, day 2 alice + bob.
	// 01-06: carol, dave; day 1 carol.
	check("cohorts", rows, []string{
		"2026-01-05T00:00:00Z size=2 retained=[1 1 2] complete=[true true true]",
		"2026-01-06T00:00:00Z size=2 retained=[0 1 0] complete=[true true true]",
	})
	closeAll("shares 01-05", reply.Cohorts[0].Shares, []float64{0.5, 0.5, 1})
	closeAll("shares 01-06", reply.Cohorts[1].Shares, []float64{0, 0.5, 0})
	// Weighted by size: (1 + 0)/4, (1 + 1)/4, (2 + 0)/4.
	closeAll("average shares", reply.AverageShares, []float64{0.25, 0.5, 0.5})
}

// Users of the experiment, their buckets (SPEC §8: fnv1a32(decimal(fnv1a32("checkout-v2" + id)))
// mod 10000 / 10000) and variants (control [0, 0.5), treatment [0.5, 1)).
var assignments = []struct {
	user    string
	bucket  float64
	variant string
}{
	{"x01", 0.8097, "treatment"}, {"x02", 0.9913, "treatment"}, {"x03", 0.5664, "treatment"},
	{"x04", 0.6499, "treatment"}, {"x05", 0.2617, "control"}, {"x06", 0.6742, "treatment"},
	{"x07", 0.0252, "control"}, {"x08", 0.8244, "treatment"}, {"x09", 0.1513, "control"},
	{"x10", 0.3149, "control"}, {"x11", 0.3662, "control"},
}

func experimentReadout() {
	for _, m := range []*pb.MetricDefinition{
		{Key: "checkout_users", Kind: pb.MetricKind_METRIC_KIND_UNIQUE_USERS, Selector: &pb.EventSelector{Event: "checkout"}},
		{Key: "checkouts", Kind: pb.MetricKind_METRIC_KIND_COUNT, Selector: &pb.EventSelector{Event: "checkout"}},
	} {
		_, err := metrics.CreateMetric(ctx, &pb.CreateMetricRequest{Project: project, Metric: m})
		must(err)
	}
	_, err := experiments.CreateExperiment(ctx, &pb.CreateExperimentRequest{Project: project, Experiment: &pb.Experiment{
		Key: "checkout-v2", Name: "One-page checkout",
		Variants:            []*pb.Variant{{Key: "control", Weight: 0.5}, {Key: "treatment", Weight: 0.5}},
		PrimaryMetricKeys:   []string{"checkout_users"},
		SecondaryMetricKeys: []string{"checkouts"},
		// Backfilled: the window is set here, so StartExperiment keeps it.
		StartTime: ts("2026-01-12T00:00:00Z"), EndTime: ts("2026-01-19T00:00:00Z"),
	}})
	must(err)
	started, err := experiments.StartExperiment(ctx, &pb.StartExperimentRequest{Project: project, ExperimentKey: "checkout-v2"})
	must(err)
	check("status", started.Experiment.Status.String(), "EXPERIMENT_STATUS_RUNNING")

	var exposures []*pb.Exposure
	for i, a := range assignments {
		got, err := experiments.Assign(ctx, &pb.AssignRequest{Project: project, ExperimentKey: "checkout-v2", UserId: a.user})
		must(err)
		check(a.user+" variant", []interface{}{got.Variant, got.InExperiment}, []interface{}{a.variant, true})
		closeTo(a.user+" bucket", got.Bucket, a.bucket)
		exposures = append(exposures, &pb.Exposure{EventId: "exp-" + a.user, UserId: a.user, ExperimentKey: "checkout-v2",
			Variant: got.Variant, Timestamp: ts(fmt.Sprintf("2026-01-12T10:%02d:00Z", i+1))})
	}
	logged, err := experiments.LogExposures(ctx, &pb.LogExposuresRequest{Project: project, Exposures: exposures})
	must(err)
	check("exposures accepted", []uint64{logged.Accepted, uint64(len(logged.Rejected))}, []uint64{11, 0})

	checkouts := []*pb.Event{
		event("c01", "checkout", "x09", "2026-01-12T09:00:00Z", nil), // before x09's exposure: not counted
		event("c02", "checkout", "x05", "2026-01-13T12:00:00Z", nil),
		event("c03", "checkout", "x07", "2026-01-13T12:10:00Z", nil),
		event("c04", "checkout", "x01", "2026-01-13T12:20:00Z", nil),
		event("c05", "checkout", "x01", "2026-01-13T15:00:00Z", nil),
		event("c06", "checkout", "x02", "2026-01-13T12:30:00Z", nil),
		event("c07", "checkout", "x03", "2026-01-13T12:40:00Z", nil),
		event("c08", "checkout", "x04", "2026-01-13T12:50:00Z", nil),
		event("c09", "checkout", "x08", "2026-01-13T13:00:00Z", nil),
		// x08 also saw control (an exposure sent as an event): it is left out of the readout.
		event("c10", "$exposure", "x08", "2026-01-12T10:30:00Z",
			map[string]*pb.Value{"experiment": str("checkout-v2"), "variant": str("control")}),
	}
	tracked, err := ingester.Track(ctx, &pb.TrackRequest{Project: project, Events: checkouts})
	must(err)
	check("checkouts accepted", tracked.Accepted, uint64(10))

	results, err := experiments.GetExperimentResults(ctx, &pb.GetExperimentResultsRequest{Project: project, ExperimentKey: "checkout-v2"})
	must(err)
	// 5 users per variant after excluding x08 → chi-square 0, SRM p = 1.
	check("excluded users", results.ExcludedUsers, uint64(1))
	check("variant users", results.VariantUsers, []uint64{5, 5})
	closeTo("srm p-value", results.SrmPValue, 1.0)
	var kinds []string
	for _, m := range results.Metrics {
		kinds = append(kinds, m.MetricKey+" "+m.SummaryType.String())
	}
	check("metrics", kinds, []string{"checkout_users SUMMARY_TYPE_PROPORTION", "checkouts SUMMARY_TYPE_MEAN"})

	// checkout_users: control 2/5 = 0.4 (x05, x07; x09's checkout precedes its exposure),
	// treatment 4/5 = 0.8. Variant CIs p ± 1.959964·sqrt(p(1−p)/5). Relative effect
	// (0.8 − 0.4)/0.4 = 1, var 0.16/(5·0.16) + 0.24·0.64/(5·0.0256) = 1.4; Welch ν =
	// 0.08²/(0.048²/4 + 0.032²/4) = 7.6923077; t = 1/sqrt(1.4); p = 2·t.sf(t, ν) (scipy).
	proportion := results.Metrics[0]
	control, treatment := proportion.Variants[0], proportion.Variants[1]
	check("checkout_users users", []uint64{control.Users, treatment.Users}, []uint64{5, 5})
	closeAll("checkout_users means", []float64{control.Mean, treatment.Mean}, []float64{0.4, 0.8})
	closeAll("checkout_users control CI", []float64{control.CiLower, control.CiUpper},
		[]float64{-0.029406594492117688, 0.8294065944921177})
	closeAll("checkout_users treatment CI", []float64{treatment.CiLower, treatment.CiUpper},
		[]float64{0.4493909837693674, 1.1506090162306326})
	c := proportion.Comparisons[0]
	check("comparison variant", c.Variant, "treatment")
	closeTo("relative effect", c.Effect, 1.0)
	closeTo("p-value", c.PValue, 0.42353078747464695)
	closeAll("effect CI", []float64{c.CiLower, c.CiUpper}, []float64{-1.7476154340513892, 3.747615434051389})
	check("significant", c.Significant, false)

	// checkouts: control 1,1,0,0,0 (mean 0.4, σ² 0.3), treatment 2,1,1,1,0 (mean 1, σ² 0.5).
	// Relative effect 1.5, var 0.5/(5·0.16) + 0.3/(5·0.0256) = 2.96875, ν = 7.5294118.
	mean := results.Metrics[1]
	control, treatment = mean.Variants[0], mean.Variants[1]
	closeAll("checkouts means", []float64{control.Mean, treatment.Mean}, []float64{0.4, 1.0})
	closeAll("checkouts sums", []float64{control.Summary.GetSum(), treatment.Summary.GetSum()}, []float64{2, 5})
	closeAll("checkouts sums of squares", []float64{control.Summary.GetSumSquares(), treatment.Summary.GetSumSquares()},
		[]float64{2, 7})
	c = mean.Comparisons[0]
	closeTo("relative effect", c.Effect, 1.5)
	closeTo("p-value", c.PValue, 0.4108831054031287)
	closeAll("effect CI", []float64{c.CiLower, c.CiUpper}, []float64{-2.5169020330767378, 5.516902033076738})

	// Nothing significant, no SRM, end time in the past (so not KEEP_RUNNING).
	check("decision", results.Decision.String(), "DECISION_INCONCLUSIVE")
}

func wrongAPIKey() {
	if apiKey == "" {
		panic(skipped{"no SEXTANT_API_KEY: a server started without SEXTANT_BOOTSTRAP_KEY accepts any key"})
	}
	wrong := withKey(context.Background(), "not-the-key")
	_, err := projects.GetProject(wrong, &pb.GetProjectRequest{Project: project})
	if err != nil {
		check("status code", status.Code(err).String(), "Unauthenticated")
		fmt.Printf("    %s: %s\n", status.Code(err), status.Convert(err).Message())
		return
	}
	if skipUnimplemented {
		panic(skipped{"not built yet: the server accepted a wrong key"})
	}
	panic(checkFailed{"a call with a wrong API key succeeded, want UNAUTHENTICATED"})
}

// runStep runs one step and returns "ok", "skipped (...)" or "FAIL: ...".
func runStep(step func()) (outcome string) {
	defer func() {
		r := recover()
		if r == nil {
			return
		}
		var cf checkFailed
		var sk skipped
		err, isErr := r.(error)
		switch {
		case !isErr:
			panic(r)
		case errors.As(err, &sk):
			outcome = "skipped (" + sk.why + ")"
		case errors.As(err, &cf):
			outcome = "FAIL: " + cf.msg
		default:
			st, ok := status.FromError(err)
			if !ok {
				panic(r) // a bug in the example itself
			}
			if st.Code() == codes.Unimplemented && skipUnimplemented {
				outcome = "skipped (not built yet)"
			} else {
				outcome = fmt.Sprintf("FAIL: %s: %s", st.Code(), st.Message())
			}
		}
	}()
	step()
	return "ok"
}

func main() {
	conn, err := grpc.Dial(addr, grpc.WithInsecure())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	defer conn.Close()
	var cancel context.CancelFunc
	ctx, cancel = context.WithTimeout(withKey(context.Background(), apiKey), 2*time.Minute)
	defer cancel()
	projects = pb.NewProjectServiceClient(conn)
	plan = pb.NewCatalogServiceClient(conn)
	ingester = pb.NewIngestServiceClient(conn)
	users = pb.NewUserServiceClient(conn)
	metrics = pb.NewMetricServiceClient(conn)
	goals = pb.NewGoalServiceClient(conn)
	analyses = pb.NewAnalysisServiceClient(conn)
	experiments = pb.NewExperimentServiceClient(conn)

	steps := []struct {
		name string
		run  func()
	}{
		{"create a project", createProject},
		{"define the tracking plan", trackingPlan},
		{"track a batch (one bad event, one retry)", trackBatch},
		{"track over a stream", trackStream},
		{"identify users", identifyUsers},
		{"define a metric and a goal, read progress", metricAndGoal},
		{"query a funnel", funnel},
		{"query retention", retention},
		{"read an experiment readout", experimentReadout},
		{"call with a wrong API key", wrongAPIKey},
	}
	fmt.Printf("Sextant at %s, project %s\n", addr, project)
	passed, failed, skippedSteps := 0, 0, 0
	for _, s := range steps {
		fmt.Println("== " + s.name)
		outcome := runStep(s.run)
		switch {
		case outcome == "ok":
			passed++
		case strings.HasPrefix(outcome, "skipped"):
			skippedSteps++
		default:
			failed++
		}
		fmt.Println("   " + outcome)
	}
	fmt.Printf("go: %d passed, %d failed, %d skipped\n", passed, failed, skippedSteps)
	if failed > 0 {
		os.Exit(1)
	}
}
