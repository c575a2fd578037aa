// Times our forward on one checkpoint: untraced, traced, traced with --all-experts, and
// layer-streamed. Prints one JSON object (median seconds over the repetitions); run_bench.py
// runs it beside HF transformers on the same machine and thread count and prints the ratios.
//   bench_forward CHECKPOINT TOKENS DTYPE REPS THREADS [DEVICE]
// TOKENS is one prompt length (512) or a comma-separated list of lengths, one prompt each.
// DEVICE (cpu by default, or cuda[:N]): each call is timed until the device has done its work.
// "traced_logits" is the traced forward that also brings the logits to the host (--save-logits).
// ES_BENCH_PROFILE=FILE: after the timings, one more resident traced call recorded by LibTorch's
// profiler into FILE (a Chrome trace; tests/bench/profile_summary.py sums it up).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "checkpoint/checkpoint.h"
#include "error.h"
#include "model/model.h"
#include "model/spec.h"
#include "bench_prompts.h"

using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
    if (argc != 6 && argc != 7) {
        std::fprintf(stderr, "usage: bench_forward CHECKPOINT TOKENS DTYPE REPS THREADS [DEVICE]\n");
        return 2;
    }
    try {
        const std::string path = argv[1], dtype = argv[3], device = argc == 7 ? argv[6] : "cpu";
        const int reps = std::atoi(argv[4]), threads = std::atoi(argv[5]);
        es::initRuntime(threads);
        auto ckpt = es::Checkpoint::open(path);
        auto spec = es::ModelSpec::fromCheckpoint(*ckpt);
        const auto prompts = benchPrompts(argv[2], spec.vocab);

        auto time = [&](es::Model& m, es::TraceOptions o) {
            std::vector<double> t;
            m.trace(prompts, o);  // warm-up
            es::synchronizeDevice(device);
            for (int r = 0; r < reps; ++r) {
                auto a = Clock::now();
                m.trace(prompts, o);
                es::synchronizeDevice(device);
                t.push_back(std::chrono::duration<double>(Clock::now() - a).count());
            }
            std::sort(t.begin(), t.end());
            return t[t.size() / 2];
        };
        es::LoadOptions lo;
        lo.dtype = dtype;
        lo.device = device;
        lo.streaming = es::LoadOptions::Streaming::Off;
        auto t0 = Clock::now();
        auto resident = es::Model::load(ckpt, spec, lo);
        double loadS = std::chrono::duration<double>(Clock::now() - t0).count();
        es::TraceOptions untraced;
        untraced.record = false;
        es::TraceOptions traced;
        es::TraceOptions all;
        all.allExperts = true;
        es::TraceOptions logits;
        logits.saveLogits = true;
        double u = time(*resident, untraced), t = time(*resident, traced), a = time(*resident, all),
               tl = time(*resident, logits);
        if (const char* prof = std::getenv("ES_BENCH_PROFILE")) {  // one more traced call, profiled
            setenv("EXPERTSCOPE_PROFILE", prof, 1);
            resident->trace(prompts, traced);
            unsetenv("EXPERTSCOPE_PROFILE");
        }
        resident.reset();
        lo.streaming = es::LoadOptions::Streaming::On;
        auto streamed = es::Model::load(ckpt, spec, lo);
        double s = time(*streamed, traced);
        std::printf(
            "{\"load\": %.4f, \"untraced\": %.4f, \"traced\": %.4f, \"all_experts\": %.4f, \"traced_logits\": %.4f, "
            "\"streamed\": %.4f, \"threads\": %d, \"device\": \"%s\"}\n",
            loadS, u, t, a, tl, s, es::runtimeThreads(), device.c_str());
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_forward: %s\n", e.what());
        return 1;
    }
}
