// Times the app's "run prompts" job and `analyze --preset/--paragraphs`: a new run of the given
// prompts and every dynamic analysis of it, done as before this change (two passes: the trace,
// then the analyses load the model again and run the forward again) and as now (one load, one
// forward: traceAndAnalyze), with the layer-streamed forward. Prints one JSON object (median
// seconds over the repetitions); run_bench.py runs it on its mid-size checkpoint.
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
            dopt.storedAttention = rt.attentionLayers;
            return es::dynamicAnalyses(ckpt, spec, nullptr, "r", prompts, rt.layers, dopt).size();
        };
        auto onePass = [&] {
            dopt.storedAttention.clear();
            return es::traceAndAnalyze(ckpt, spec, nullptr, "r", prompts, dopt).results.size();
        };
        auto median = [&](auto&& f) {
            f();  // warm-up
            std::vector<double> t;
            for (int r = 0; r < reps; ++r) {
                auto a = Clock::now();
                f();
                t.push_back(std::chrono::duration<double>(Clock::now() - a).count());
            }
            std::sort(t.begin(), t.end());
            return t[t.size() / 2];
        };
        const double two = median(twoPass), one = median(onePass);
        std::printf("{\"two_pass\": %.4f, \"one_pass\": %.4f, \"ratio\": %.4f, \"threads\": %d}\n", two, one, one / two,
                    es::runtimeThreads());
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_run_job: %s\n", e.what());
        return 1;
    }
}
