// Times the app's "run prompts" job and `analyze --preset/--paragraphs`: a new run of the given
// prompts and every dynamic analysis of it, done as before the family-table issue (two passes:
// the trace, then the analyses load the model again, run the forward again and evaluate every
// expert again for D1/D2) and as now (one load, one forward: traceAndAnalyze, the chosen
// experts' outputs taken from the forward), with the layer-streamed forward. The two are run
// alternately, REPS times each after a warm-up of each, so that a slow spell of a shared machine
// falls on both; prints one JSON object: the medians and the median of the per-repetition
// ratios.
//   bench_run_job CHECKPOINT TOKENS REPS THREADS ANALYSES
// TOKENS is a comma-separated list of prompt lengths, one prompt each; ANALYSES a --dynamic list.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "analysis/analysis.h"
#include "checkpoint/checkpoint.h"
#include "model/model.h"
#include "model/spec.h"
#include "bench_prompts.h"

using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
    if (argc != 6) {
        std::fprintf(stderr, "usage: bench_run_job CHECKPOINT TOKENS REPS THREADS ANALYSES\n");
        return 2;
    }
    try {
        const std::string path = argv[1];
        const int reps = std::atoi(argv[3]), threads = std::atoi(argv[4]);
        es::initRuntime(threads);
        auto ckpt = es::Checkpoint::open(path);
        const auto spec = es::ModelSpec::fromCheckpoint(*ckpt);
        const auto prompts = benchPrompts(argv[2], spec.vocab);
        es::DynamicOptions dopt;
        dopt.analyses = es::parseDynamicList(argv[5]);
        dopt.layerStreaming = true;
        dopt.layers = es::analysisLayers(spec, {}, path);

        auto twoPass = [&] {
            es::LoadOptions lo;
            lo.streaming = es::LoadOptions::Streaming::On;
            auto model = es::Model::load(ckpt, spec, lo);
            es::RunTrace rt = model->trace(prompts, {});
            model.reset();
            es::DynamicOptions o = dopt;
            o.storedAttention = rt.attentionLayers;
            o.reuseChosenOutputs = false;
            return es::dynamicAnalyses(ckpt, spec, nullptr, "r", prompts, rt.layers, o).size();
        };
        auto onePass = [&] { return es::traceAndAnalyze(ckpt, spec, nullptr, "r", prompts, dopt).results.size(); };
        auto seconds = [](auto&& f) {
            auto a = Clock::now();
            f();
            return std::chrono::duration<double>(Clock::now() - a).count();
        };
        auto median = [](std::vector<double> v) {
            std::sort(v.begin(), v.end());
            return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
        };
        twoPass();  // warm-ups
        onePass();
        std::vector<double> two, one, ratio;
        for (int r = 0; r < reps; ++r) {
            two.push_back(seconds(twoPass));
            one.push_back(seconds(onePass));
            ratio.push_back(one.back() / two.back());
        }
        std::printf(
            "{\"two_pass\": %.4f, \"one_pass\": %.4f, \"ratio\": %.4f, \"ratio_min\": %.4f, "
            "\"ratio_max\": %.4f, \"reps\": %d, \"threads\": %d}\n",
            median(two), median(one), median(ratio), *std::min_element(ratio.begin(), ratio.end()),
            *std::max_element(ratio.begin(), ratio.end()), reps, es::runtimeThreads());
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_run_job: %s\n", e.what());
        return 1;
    }
}
