#include "server/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>
#include <stdexcept>

namespace hvlm::metrics {
namespace {

void atomic_add(std::atomic<double>& target, double amount) {
  double current = target.load(std::memory_order_relaxed);
  while (!target.compare_exchange_weak(current, current + amount, std::memory_order_relaxed)) {
  }
}

bool valid_metric_name(const std::string& name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
                    (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

bool valid_label_name(const std::string& name) {
  if (name.empty() || name.rfind("__", 0) == 0) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                    (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

// Go's strconv formatting as Prometheus prints it: +Inf, -Inf, NaN, shortest round-trip.
std::string format_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.0f", v);
    return buf;
  }
  char buf[32];
  for (int precision = 6; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

void append_escaped(std::string& out, const std::string& s, bool quote) {
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (quote && c == '"') {
      out += "\\\"";
    } else {
      out += c;
    }
  }
}

// `{a="x",b="y"}` (with `extra` appended as one more pair), or nothing without labels.
void append_labels(std::string& out, const Labels& names, const Labels& values, const char* extra_name = nullptr,
                   const std::string& extra_value = {}) {
  if (names.empty() && extra_name == nullptr) return;
  out += '{';
  bool first = true;
  for (size_t i = 0; i < names.size(); ++i) {
    if (!first) out += ',';
    first = false;
    out += names[i];
    out += "=\"";
    append_escaped(out, values[i], true);
    out += '"';
  }
  if (extra_name != nullptr) {
    if (!first) out += ',';
    out += extra_name;
    out += "=\"";
    out += extra_value;
    out += '"';
  }
  out += '}';
}

void append_sample(std::string& out, const std::string& name, const Labels& names, const Labels& values,
                   double value) {
  out += name;
  append_labels(out, names, values);
  out += ' ';
  out += format_value(value);
  out += '\n';
}

const char* type_name(MetricType type) {
  switch (type) {
    case MetricType::kCounter: return "counter";
    case MetricType::kGauge: return "gauge";
    case MetricType::kHistogram: return "histogram";
  }
  return "untyped";
}

void check_names(const std::string& name, const Labels& label_names, MetricType type) {
  if (!valid_metric_name(name)) throw std::invalid_argument("invalid metric name '" + name + "'");
  std::set<std::string> seen;
  for (const std::string& label : label_names) {
    if (!valid_label_name(label)) {
      throw std::invalid_argument("metric " + name + ": invalid label name '" + label + "'");
    }
    if (type == MetricType::kHistogram && label == "le") {
      throw std::invalid_argument("metric " + name + ": a histogram cannot have a label named 'le'");
    }
    if (!seen.insert(label).second) {
      throw std::invalid_argument("metric " + name + ": label '" + label + "' given twice");
    }
  }
}

std::unique_ptr<Counter> make_child(const std::vector<double>&, Counter*) { return std::make_unique<Counter>(); }
std::unique_ptr<Gauge> make_child(const std::vector<double>&, Gauge*) { return std::make_unique<Gauge>(); }
std::unique_ptr<Histogram> make_child(const std::vector<double>& bounds, Histogram*) {
  return std::make_unique<Histogram>(bounds);
}

}  // namespace

void Counter::inc(double amount) {
  if (amount > 0) atomic_add(value_, amount);
}

void Gauge::add(double amount) { atomic_add(value_, amount); }

Histogram::Histogram(std::vector<double> upper_bounds)
    : upper_bounds_(std::move(upper_bounds)),
      buckets_(new std::atomic<uint64_t>[upper_bounds_.size() + 1]) {
  for (size_t i = 0; i < upper_bounds_.size(); ++i) {
    if (!std::isfinite(upper_bounds_[i]) || (i > 0 && upper_bounds_[i] <= upper_bounds_[i - 1])) {
      throw std::invalid_argument("histogram bounds must be finite and strictly increasing");
    }
  }
  for (size_t i = 0; i <= upper_bounds_.size(); ++i) buckets_[i].store(0, std::memory_order_relaxed);
}

void Histogram::observe(double value) {
  if (std::isnan(value)) return;
  const size_t bucket = static_cast<size_t>(
      std::lower_bound(upper_bounds_.begin(), upper_bounds_.end(), value) - upper_bounds_.begin());
  buckets_[bucket].fetch_add(1, std::memory_order_relaxed);
  atomic_add(sum_, value);
}

Histogram::Snapshot Histogram::snapshot() const {
  Snapshot s;
  s.upper_bounds = upper_bounds_;
  s.cumulative.resize(upper_bounds_.size() + 1);
  uint64_t running = 0;
  for (size_t i = 0; i <= upper_bounds_.size(); ++i) {
    running += buckets_[i].load(std::memory_order_relaxed);
    s.cumulative[i] = running;
  }
  s.count = running;
  s.sum = sum_.load(std::memory_order_relaxed);
  return s;
}

std::vector<double> exponential_buckets(double start, double factor, int count) {
  if (!(start > 0) || !(factor > 1) || count < 1) {
    throw std::invalid_argument("exponential_buckets needs start > 0, factor > 1, count >= 1");
  }
  std::vector<double> bounds;
  double bound = start;
  for (int i = 0; i < count; ++i, bound *= factor) bounds.push_back(bound);
  return bounds;
}

template <typename Metric>
Metric& Family<Metric>::labels(const Labels& values) {
  if (values.size() != label_names_.size()) {
    throw std::invalid_argument("metric " + name_ + " has " + std::to_string(label_names_.size()) +
                                " labels, got " + std::to_string(values.size()) + " values");
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto& child = children_[values];
  if (!child) child = make_child(buckets_, static_cast<Metric*>(nullptr));
  return *child;
}

template <typename Metric>
template <typename Visit>
void Family<Metric>::for_each(Visit visit) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [values, child] : children_) visit(values, *child);
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

// One registered name: a family of values, or a callback.
struct Registry::Entry {
  std::string name;
  std::string help;
  MetricType type;
  Labels label_names;
  std::unique_ptr<Family<Counter>> counters;
  std::unique_ptr<Family<Gauge>> gauges;
  std::unique_ptr<Family<Histogram>> histograms;
  std::function<std::vector<Sample>()> collect;

  void render(std::string& out) const;
};

void Registry::Entry::render(std::string& out) const {
  out += "# HELP " + name + ' ';
  append_escaped(out, help, false);
  out += "\n# TYPE " + name + ' ' + type_name(type) + '\n';
  if (counters) {
    counters->for_each([&](const Labels& v, const Counter& c) { append_sample(out, name, label_names, v, c.value()); });
  } else if (gauges) {
    gauges->for_each([&](const Labels& v, const Gauge& g) { append_sample(out, name, label_names, v, g.value()); });
  } else if (histograms) {
    histograms->for_each([&](const Labels& v, const Histogram& h) {
      const Histogram::Snapshot s = h.snapshot();
      for (size_t i = 0; i < s.cumulative.size(); ++i) {
        out += name + "_bucket";
        append_labels(out, label_names, v, "le", i < s.upper_bounds.size() ? format_value(s.upper_bounds[i]) : "+Inf");
        out += ' ' + format_value(static_cast<double>(s.cumulative[i])) + '\n';
      }
      append_sample(out, name + "_sum", label_names, v, s.sum);
      append_sample(out, name + "_count", label_names, v, static_cast<double>(s.count));
    });
  } else if (collect) {
    for (const Sample& sample : collect()) {
      if (sample.label_values.size() == label_names.size()) {
        append_sample(out, name, label_names, sample.label_values, sample.value);
      }
    }
  }
}

Registry::Registry() = default;
Registry::~Registry() = default;

void Registry::add(std::unique_ptr<Entry> entry) {
  // Whether `name` is one of the series `histogram` renders besides its own name.
  const auto is_histogram_series = [](const Entry& histogram, const std::string& name) {
    if (histogram.type != MetricType::kHistogram) return false;
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      if (name == histogram.name + suffix) return true;
    }
    return false;
  };
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& e : entries_) {
    if (e->name == entry->name) throw std::invalid_argument("metric " + entry->name + " is already registered");
    // A family under a histogram's _bucket/_sum/_count name would make the exposition invalid.
    if (is_histogram_series(*e, entry->name) || is_histogram_series(*entry, e->name)) {
      throw std::invalid_argument("metric " + entry->name + " collides with the series of metric " + e->name);
    }
  }
  entries_.push_back(std::move(entry));
}

Family<Counter>& Registry::counter(const std::string& name, const std::string& help, Labels label_names) {
  check_names(name, label_names, MetricType::kCounter);
  auto e = std::make_unique<Entry>(Entry{name, help, MetricType::kCounter, label_names, {}, {}, {}, {}});
  e->counters.reset(new Family<Counter>(name, help, std::move(label_names), {}));
  Family<Counter>& family = *e->counters;
  add(std::move(e));
  return family;
}

Family<Gauge>& Registry::gauge(const std::string& name, const std::string& help, Labels label_names) {
  check_names(name, label_names, MetricType::kGauge);
  auto e = std::make_unique<Entry>(Entry{name, help, MetricType::kGauge, label_names, {}, {}, {}, {}});
  e->gauges.reset(new Family<Gauge>(name, help, std::move(label_names), {}));
  Family<Gauge>& family = *e->gauges;
  add(std::move(e));
  return family;
}

Family<Histogram>& Registry::histogram(const std::string& name, const std::string& help, Labels label_names,
                                       std::vector<double> upper_bounds) {
  check_names(name, label_names, MetricType::kHistogram);
  Histogram check(upper_bounds);  // throws for bad bounds before anything is registered
  auto e = std::make_unique<Entry>(Entry{name, help, MetricType::kHistogram, label_names, {}, {}, {}, {}});
  e->histograms.reset(new Family<Histogram>(name, help, std::move(label_names), std::move(upper_bounds)));
  Family<Histogram>& family = *e->histograms;
  add(std::move(e));
  return family;
}

void Registry::callback(MetricType type, const std::string& name, const std::string& help, Labels label_names,
                        std::function<std::vector<Sample>()> collect) {
  if (type == MetricType::kHistogram) throw std::invalid_argument("metric " + name + ": callbacks report counters or gauges");
  check_names(name, label_names, type);
  if (!collect) throw std::invalid_argument("metric " + name + ": no collect function");
  add(std::make_unique<Entry>(Entry{name, help, type, std::move(label_names), {}, {}, {}, std::move(collect)}));
}

std::string Registry::render() const {
  std::vector<const Entry*> entries;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& e : entries_) entries.push_back(e.get());
  }
  std::string out;
  out.reserve(16 * 1024);
  for (const Entry* e : entries) e->render(out);
  return out;
}

}  // namespace hvlm::metrics
