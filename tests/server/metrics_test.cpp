// metrics::Registry and its counters, gauges, histograms and callback families: the exact text
// exposition (format 0.0.4), escaping, value formatting, registration errors, and exact sums
// under concurrent updates. promtool, where installed, judges a rendered registry too.
#include "server/metrics.h"

#include "tests/server/observability_test_util.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <thread>
#include <vector>

namespace hvlm::metrics {
namespace {

using hvlm::testing::promtool_check;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The text after `series ` on its line of `text`, or "<missing>".
std::string rendered_value(const std::string& text, const std::string& series) {
  const std::string prefix = "\n" + series + " ";
  const size_t at = ("\n" + text).find(prefix);
  if (at == std::string::npos) return "<missing>";
  const size_t begin = at + prefix.size() - 1;  // -1: the "\n" prepended to text
  return text.substr(begin, text.find('\n', begin) - begin);
}

TEST(MetricsRegistry, RendersCounterGaugeAndHistogramWithLabelsExactly) {
  Registry registry;
  auto& requests = registry.counter("demo_requests_total", "Requests handled.", {"rpc", "code"});
  requests.labels({"Forward", "OK"}).inc(3);
  requests.labels({"Forward", "NOT_FOUND"}).inc();
  registry.gauge("demo_temperature_celsius", "Current temperature.").get().set(-2.5);
  auto& latency = registry.histogram("demo_latency_seconds", "Request latency.", {"stack"}, {0.5, 1, 10});
  // 0.5 lies on a bound: `le` is inclusive. 64 lies above every bound: only +Inf holds it.
  for (double v : {0.25, 0.5, 0.75, 4.0, 64.0}) latency.labels({"video"}).observe(v);

  // Families in registration order; children of a family in label-value order.
  EXPECT_EQ(registry.render(),
            "# HELP demo_requests_total Requests handled.\n"
            "# TYPE demo_requests_total counter\n"
            "demo_requests_total{rpc=\"Forward\",code=\"NOT_FOUND\"} 1\n"
            "demo_requests_total{rpc=\"Forward\",code=\"OK\"} 3\n"
            "# HELP demo_temperature_celsius Current temperature.\n"
            "# TYPE demo_temperature_celsius gauge\n"
            "demo_temperature_celsius -2.5\n"
            "# HELP demo_latency_seconds Request latency.\n"
            "# TYPE demo_latency_seconds histogram\n"
            "demo_latency_seconds_bucket{stack=\"video\",le=\"0.5\"} 2\n"
            "demo_latency_seconds_bucket{stack=\"video\",le=\"1\"} 3\n"
            "demo_latency_seconds_bucket{stack=\"video\",le=\"10\"} 4\n"
            "demo_latency_seconds_bucket{stack=\"video\",le=\"+Inf\"} 5\n"
            "demo_latency_seconds_sum{stack=\"video\"} 69.5\n"
            "demo_latency_seconds_count{stack=\"video\"} 5\n");
}

TEST(MetricsRegistry, HistogramBucketsAreCumulativeAndEndInCount) {
  Registry registry;
  Histogram& sizes = registry.histogram("demo_size_bytes", "Sizes.", {}, exponential_buckets(1, 4, 3)).get();
  for (double v : {0.0, 1.0, 2.0, 3.0, 16.0, 17.0, 1e9, kInf}) sizes.observe(v);
  const Histogram::Snapshot s = sizes.snapshot();
  EXPECT_EQ(s.upper_bounds, (std::vector<double>{1, 4, 16}));
  EXPECT_EQ(s.cumulative, (std::vector<uint64_t>{2, 4, 5, 8}));
  EXPECT_EQ(s.count, 8u);
  EXPECT_EQ(s.cumulative.back(), s.count);
  EXPECT_EQ(s.sum, kInf);
  // Without labels of its own, `le` is the only label.
  const std::string text = registry.render();
  EXPECT_EQ(rendered_value(text, "demo_size_bytes_bucket{le=\"1\"}"), "2");
  EXPECT_EQ(rendered_value(text, "demo_size_bytes_bucket{le=\"4\"}"), "4");
  EXPECT_EQ(rendered_value(text, "demo_size_bytes_bucket{le=\"16\"}"), "5");
  EXPECT_EQ(rendered_value(text, "demo_size_bytes_bucket{le=\"+Inf\"}"), "8");
  EXPECT_EQ(rendered_value(text, "demo_size_bytes_count"), "8");
  EXPECT_EQ(rendered_value(text, "demo_size_bytes_sum"), "+Inf");
}

TEST(MetricsRegistry, EscapesLabelValuesAndHelpText) {
  Registry registry;
  registry
      .counter("demo_paths_total", "Paths seen, with \"quotes\", a \\ backslash\nand a second line.",
               {"path"})
      .labels({"C:\\dir\\\"quoted\"\nnext"})
      .inc();
  // Label values escape \, " and newline; HELP escapes \ and newline only (0.0.4).
  EXPECT_EQ(registry.render(),
            "# HELP demo_paths_total Paths seen, with \"quotes\", a \\\\ backslash\\nand a second line.\n"
            "# TYPE demo_paths_total counter\n"
            "demo_paths_total{path=\"C:\\\\dir\\\\\\\"quoted\\\"\\nnext\"} 1\n");
}

TEST(MetricsRegistry, FormatsValuesAsPrometheusDoes) {
  Registry registry;
  auto& values = registry.gauge("demo_value", "Values.", {"case"});
  const std::vector<std::pair<double, std::string>> cases = {
      {0, "0"},
      {-3, "-3"},
      {800000, "800000"},
      {123456789, "123456789"},
      {100000000000001, "100000000000001"},  // an integer below 1e15: all digits, no exponent
      {0.1, "0.1"},
      {-2.25, "-2.25"},
      {1.0 / 3, "0.3333333333333333"},  // the shortest text that reads back the same double
      {1e-7, "1e-07"},
      {2.5e20, "2.5e+20"},
      {kInf, "+Inf"},
      {-kInf, "-Inf"},
      {kNaN, "NaN"},
  };
  for (size_t i = 0; i < cases.size(); ++i) values.labels({std::to_string(i)}).set(cases[i].first);
  const std::string text = registry.render();
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string series = "demo_value{case=\"" + std::to_string(i) + "\"}";
    EXPECT_EQ(rendered_value(text, series), cases[i].second) << series;
    if (std::isfinite(cases[i].first)) {
      EXPECT_EQ(std::strtod(rendered_value(text, series).c_str(), nullptr), cases[i].first) << series;
    }
  }
  // Bounds are formatted the same way.
  registry.histogram("demo_wait_seconds", "Waits.", {}, exponential_buckets(1e-4, 2, 2)).get().observe(1e-4);
  EXPECT_EQ(rendered_value(registry.render(), "demo_wait_seconds_bucket{le=\"0.0001\"}"), "1");
  EXPECT_EQ(rendered_value(registry.render(), "demo_wait_seconds_bucket{le=\"0.0002\"}"), "1");
}

TEST(MetricsRegistry, CountersIgnoreNegativeIncrementsAndGaugesGoBothWays) {
  Registry registry;
  Counter& counter = registry.counter("demo_events_total", "Events.").get();
  counter.inc();
  counter.inc(4.5);
  counter.inc(-2);
  counter.inc(-kInf);
  counter.inc(0);
  EXPECT_EQ(counter.value(), 5.5);
  Gauge& gauge = registry.gauge("demo_level", "Level.").get();
  gauge.set(10);
  gauge.add(-4);
  gauge.add(0.5);
  EXPECT_EQ(gauge.value(), 6.5);
  const std::string text = registry.render();
  EXPECT_EQ(rendered_value(text, "demo_events_total"), "5.5");
  EXPECT_EQ(rendered_value(text, "demo_level"), "6.5");
}

TEST(MetricsRegistry, LabelsReturnTheSameChildForTheSameValues) {
  Registry registry;
  auto& family = registry.counter("demo_calls_total", "Calls.", {"rpc"});
  Counter& a = family.labels({"A"});
  a.inc();
  EXPECT_EQ(&family.labels({"A"}), &a);
  EXPECT_NE(&family.labels({"B"}), &a);
  EXPECT_EQ(family.labels({"A"}).value(), 1);
  EXPECT_EQ(family.labels({"B"}).value(), 0);
  // A child is rendered from its creation on, even at zero.
  EXPECT_EQ(rendered_value(registry.render(), "demo_calls_total{rpc=\"B\"}"), "0");
}

TEST(MetricsRegistry, FamilyWithoutChildrenRendersOnlyItsHeader) {
  Registry registry;
  registry.counter("demo_unused_total", "Never incremented.", {"rpc"});
  EXPECT_EQ(registry.render(), "# HELP demo_unused_total Never incremented.\n# TYPE demo_unused_total counter\n");
}

TEST(MetricsRegistry, InvalidNamesAreRejected) {
  Registry registry;
  for (const std::string bad : {"", "1starts_with_digit", "has-dash", "has space", "dot.ted", "caf\xc3\xa9"}) {
    EXPECT_THROW(registry.counter(bad, "h"), std::invalid_argument) << "'" << bad << "'";
    EXPECT_THROW(registry.gauge(bad, "h"), std::invalid_argument) << "'" << bad << "'";
    EXPECT_THROW(registry.histogram(bad, "h", {}, {1}), std::invalid_argument) << "'" << bad << "'";
    EXPECT_THROW(registry.callback(MetricType::kGauge, bad, "h", {}, [] { return std::vector<Sample>{}; }),
                 std::invalid_argument)
        << "'" << bad << "'";
  }
  for (const std::string bad : {"", "__reserved", "1digit", "has:colon", "has-dash", "has space"}) {
    EXPECT_THROW(registry.counter("demo_total", "h", {bad}), std::invalid_argument) << "'" << bad << "'";
  }
  EXPECT_THROW(registry.counter("demo_total", "h", {"rpc", "rpc"}), std::invalid_argument);
  // None of the failures registered anything; valid names still work.
  EXPECT_EQ(registry.render(), "");
  EXPECT_NO_THROW(registry.counter("demo:sub_system_total", "h", {"_private", "a1"}));
  EXPECT_NO_THROW(registry.gauge("_leading_underscore", "h"));
}

TEST(MetricsRegistry, DuplicateNamesAreRejectedAcrossTypes) {
  Registry registry;
  registry.counter("demo_total", "h");
  EXPECT_THROW(registry.counter("demo_total", "h"), std::invalid_argument);
  EXPECT_THROW(registry.gauge("demo_total", "h"), std::invalid_argument);
  EXPECT_THROW(registry.histogram("demo_total", "h", {}, {1}), std::invalid_argument);
  EXPECT_THROW(registry.callback(MetricType::kCounter, "demo_total", "h", {}, [] { return std::vector<Sample>{}; }),
               std::invalid_argument);
  registry.callback(MetricType::kGauge, "demo_level", "h", {}, [] { return std::vector<Sample>{}; });
  EXPECT_THROW(registry.gauge("demo_level", "h"), std::invalid_argument);
  try {
    registry.counter("demo_total", "h");
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("demo_total"), std::string::npos) << e.what();
  }
}

TEST(MetricsRegistry, NamesCannotCollideWithAHistogramsSeries) {
  // A histogram renders name_bucket, name_sum and name_count: a family of one of those names
  // would give the exposition a second HELP for the same metric, which Prometheus refuses.
  Registry registry;
  registry.histogram("demo_seconds", "h", {}, {1});
  for (const char* taken : {"demo_seconds_bucket", "demo_seconds_sum", "demo_seconds_count"}) {
    EXPECT_THROW(registry.counter(taken, "h"), std::invalid_argument) << taken;
    EXPECT_THROW(registry.gauge(taken, "h"), std::invalid_argument) << taken;
    EXPECT_THROW(registry.callback(MetricType::kGauge, taken, "h", {}, [] { return std::vector<Sample>{}; }),
                 std::invalid_argument)
        << taken;
  }
  // And the other way round: a histogram whose series a registered family already uses.
  registry.gauge("demo_bytes_sum", "h");
  EXPECT_THROW(registry.histogram("demo_bytes", "h", {}, {1}), std::invalid_argument);
  // Similar names that do not collide are fine.
  EXPECT_NO_THROW(registry.counter("demo_seconds_total", "h"));
  EXPECT_NO_THROW(registry.gauge("demo_seconds_counts", "h"));
  EXPECT_NO_THROW(registry.gauge("demo_bytes", "h"));
}

TEST(MetricsRegistry, HistogramsRejectLeLabelAndBadBounds) {
  Registry registry;
  EXPECT_THROW(registry.histogram("demo_seconds", "h", {"le"}, {1}), std::invalid_argument);
  EXPECT_THROW(registry.histogram("demo_seconds", "h", {"stack", "le"}, {1}), std::invalid_argument);
  for (const std::vector<double>& bad : std::vector<std::vector<double>>{
           {1, 1}, {2, 1}, {1, 2, 1.5}, {1, kInf}, {-kInf, 1}, {kNaN}, {0.5, kNaN}}) {
    EXPECT_THROW(registry.histogram("demo_seconds", "h", {}, bad), std::invalid_argument) << bad.size();
  }
  EXPECT_THROW(Histogram({3, 2}), std::invalid_argument);
  // A failed registration leaves the name free.
  EXPECT_EQ(registry.render(), "");
  EXPECT_NO_THROW(registry.histogram("demo_seconds", "h", {}, {-1, 0, 1}));
  // `le` is only reserved for histograms.
  EXPECT_NO_THROW(registry.gauge("demo_le", "h", {"le"}));
  // No bounds at all: one +Inf bucket.
  registry.histogram("demo_any_bytes", "h", {}, {}).get().observe(7);
  EXPECT_EQ(rendered_value(registry.render(), "demo_any_bytes_bucket{le=\"+Inf\"}"), "1");
}

TEST(MetricsRegistry, ExponentialBucketsMultiplyFromStart) {
  EXPECT_EQ(exponential_buckets(1, 2, 4), (std::vector<double>{1, 2, 4, 8}));
  EXPECT_EQ(exponential_buckets(0.5, 10, 1), (std::vector<double>{0.5}));
  EXPECT_THROW(exponential_buckets(0, 2, 3), std::invalid_argument);
  EXPECT_THROW(exponential_buckets(1, 1, 3), std::invalid_argument);
  EXPECT_THROW(exponential_buckets(1, 2, 0), std::invalid_argument);
}

TEST(MetricsRegistry, WrongNumberOfLabelValuesIsRejected) {
  Registry registry;
  auto& counters = registry.counter("demo_total", "h", {"rpc", "code"});
  EXPECT_THROW(counters.labels({"Forward"}), std::invalid_argument);
  EXPECT_THROW(counters.labels({"Forward", "OK", "extra"}), std::invalid_argument);
  EXPECT_THROW(counters.get(), std::invalid_argument);
  auto& histograms = registry.histogram("demo_seconds", "h", {"stack"}, {1});
  EXPECT_THROW(histograms.labels({}), std::invalid_argument);
  auto& plain = registry.gauge("demo_level", "h");
  EXPECT_THROW(plain.labels({"x"}), std::invalid_argument);
  // Nothing was created by the failed lookups.
  EXPECT_EQ(registry.render(),
            "# HELP demo_total h\n# TYPE demo_total counter\n"
            "# HELP demo_seconds h\n# TYPE demo_seconds histogram\n"
            "# HELP demo_level h\n# TYPE demo_level gauge\n");
}

TEST(MetricsRegistry, CallbackFamiliesReportFreshSamplesAndSkipWrongArity) {
  Registry registry;
  std::atomic<int> calls{0};
  std::atomic<int> depth{3};
  registry.callback(MetricType::kGauge, "demo_queue_depth", "Items queued.", {"queue"}, [&] {
    ++calls;
    return std::vector<Sample>{
        {{"a"}, static_cast<double>(depth.load())}, {{"b", "extra"}, 9}, {{}, 7}, {{"c"}, 1.5}};
  });
  registry.callback(MetricType::kCounter, "demo_ticks_total", "Ticks.", {}, [] {
    return std::vector<Sample>{{{}, 42}};
  });
  EXPECT_EQ(calls.load(), 0);  // nothing runs before a render
  EXPECT_EQ(registry.render(),
            "# HELP demo_queue_depth Items queued.\n"
            "# TYPE demo_queue_depth gauge\n"
            "demo_queue_depth{queue=\"a\"} 3\n"
            "demo_queue_depth{queue=\"c\"} 1.5\n"
            "# HELP demo_ticks_total Ticks.\n"
            "# TYPE demo_ticks_total counter\n"
            "demo_ticks_total 42\n");
  EXPECT_EQ(calls.load(), 1);
  depth = 8;
  EXPECT_EQ(rendered_value(registry.render(), "demo_queue_depth{queue=\"a\"}"), "8");
  EXPECT_EQ(calls.load(), 2);

  EXPECT_THROW(registry.callback(MetricType::kHistogram, "demo_hist", "h", {}, [] { return std::vector<Sample>{}; }),
               std::invalid_argument);
  EXPECT_THROW(registry.callback(MetricType::kGauge, "demo_nothing", "h", {}, nullptr), std::invalid_argument);
}

TEST(MetricsRegistry, ConcurrentUpdatesSumExactly) {
  constexpr int kThreads = 8;
  constexpr int kIncrements = 100000;
  Registry registry;
  auto& events = registry.counter("demo_events_total", "Events.", {"group"});
  Gauge& level = registry.gauge("demo_level", "Level.").get();
  Histogram& sizes = registry.histogram("demo_size_bytes", "Sizes.", {}, {0.5, 1.5}).get();
  std::atomic<bool> done{false};
  std::atomic<int> renders{0};
  std::thread renderer([&] {  // scrapes meanwhile, as Prometheus would
    while (!done.load()) {
      registry.render();
      ++renders;
    }
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Counter& shared = events.labels({"shared"});  // every thread creates or finds the same child
      Counter& own = events.labels({"thread" + std::to_string(t)});
      for (int i = 0; i < kIncrements; ++i) {
        shared.inc();
        own.inc(2);
        level.add(i % 2 == 0 ? 3 : -1);
        sizes.observe(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  done = true;
  renderer.join();

  EXPECT_EQ(events.labels({"shared"}).value(), kThreads * kIncrements);
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(events.labels({"thread" + std::to_string(t)}).value(), 2 * kIncrements);
  EXPECT_EQ(level.value(), kThreads * kIncrements);  // +3 -1 per pair of iterations
  const Histogram::Snapshot s = sizes.snapshot();
  EXPECT_EQ(s.count, static_cast<uint64_t>(kThreads * kIncrements));
  EXPECT_EQ(s.sum, kThreads * kIncrements);
  EXPECT_EQ(s.cumulative, (std::vector<uint64_t>{0, kThreads * kIncrements, kThreads * kIncrements}));
  const std::string text = registry.render();
  EXPECT_EQ(rendered_value(text, "demo_events_total{group=\"shared\"}"), "800000");
  EXPECT_EQ(rendered_value(text, "demo_size_bytes_count"), "800000");
  EXPECT_GE(renders.load(), 1);
}

TEST(MetricsRegistry, PromtoolAcceptsTheRenderedRegistry) {
  Registry registry;
  auto& requests = registry.counter("demo_requests_total", "Requests by \"path\"\\code,\nsecond line.",
                                    {"path", "code"});
  requests.labels({"/a\\b", "OK"}).inc(3);
  requests.labels({"quote\"and\nnewline", "NOT_FOUND"}).inc(0.5);
  registry.gauge("demo_temperature_celsius", "Temperature.", {"room"}).labels({"lab"}).set(-2.5);
  registry.gauge("demo_ratio", "Ratio.", {"kind"}).labels({"nan"}).set(kNaN);
  registry.gauge("demo_ratio_limit", "Limit.").get().set(kInf);
  auto& latency =
      registry.histogram("demo_latency_seconds", "Latency.", {"stack"}, exponential_buckets(1e-4, 2, 21));
  for (double v : {1e-5, 0.003, 0.25, 7.0, 1e3}) latency.labels({"video"}).observe(v);
  registry.histogram("demo_unused_seconds", "Never observed.", {"stack"}, {1});
  registry.callback(MetricType::kGauge, "demo_queued_items", "Items queued.", {"queue"},
                    [] { return std::vector<Sample>{{{"a"}, 1}, {{"b"}, 2}}; });
  registry.callback(MetricType::kCounter, "demo_ticks_total", "Ticks.", {},
                    [] { return std::vector<Sample>{{{}, 42}}; });

  std::string output;
  const auto status = promtool_check(registry.render(), &output);
  if (!status) GTEST_SKIP() << "promtool is not on PATH (Debian package prometheus)";
  EXPECT_EQ(*status, 0) << output << "\n" << registry.render();
  // The check can fail: a malformed line is refused.
  const auto broken = promtool_check("# TYPE demo_total counter\ndemo_total{path=\"unterminated} 1\n", &output);
  EXPECT_NE(*broken, 0);
}

}  // namespace
}  // namespace hvlm::metrics
