// Benchmark driver for the analyses (run by tests/bench/bench_analyses.py, not by CTest).
//   bench_analyses static CHECKPOINT [S1,S2,S4 [LAYER [DEVICE]]]   times the static analyses (of
//        every MoE layer, or of LAYER; "all": every one), their pass over the weights on DEVICE
//        (cpu: the host kernels; cuda: LibTorch on the GPU; torch: LibTorch on the CPU); samples the
//        resident set every 5 ms and prints {"seconds", "baseline_anon_mb", "peak_anon_mb",
//        "peak_file_mb"}
//   bench_analyses dynamic CHECKPOINT PROMPTS LENGTH
//        times a plain traced forward, a traced forward with every expert evaluated (--all-experts)
//        and D1+D2 on the same random prompts: {"trace_s", "all_experts_s", "dynamic_s", "tokens",
//        "dynamic_anon_mb" (what D1+D2 allocate at their peak, their copy of the model included)}.
//        D1+D2 load their own model: the all-experts forward is timed with its model's load too.
//        The checkpoint's fingerprint (the results' provenance; taken once per opened checkpoint,
//        as a session is made) is taken before the clocks start, as the warm-up forward is run.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <thread>

#include "analysis/analysis.h"
#include "checkpoint/checkpoint.h"
#include "model/model.h"
#include "model/spec.h"

namespace {

using Clock = std::chrono::steady_clock;

// RssAnon and RssFile from /proc/self/status, in MiB.
std::pair<double, double> rss() {
    std::ifstream in("/proc/self/status");
    std::string key;
    double anon = 0, file = 0;
    while (in >> key) {
        double kb = 0;
        if (key == "RssAnon:" && in >> kb) anon = kb / 1024.0;
        else if (key == "RssFile:" && in >> kb) file = kb / 1024.0;
    }
    return {anon, file};
}

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Samples the resident set every 5 ms while it lives: the peaks, in MiB.
struct RssSampler {
    double peakAnon = 0, peakFile = 0;
    std::atomic<bool> done{false};
    std::thread thread{[this] {
        while (!done.load()) {
            auto [a, f] = rss();
            peakAnon = std::max(peakAnon, a);
            peakFile = std::max(peakFile, f);
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
    }};
    void stop() {
        done = true;
        if (thread.joinable()) thread.join();
    }
    ~RssSampler() { stop(); }
};

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr,
                     "usage: bench_analyses static CKPT [LIST [LAYER|all [DEVICE]]] | dynamic CKPT PROMPTS LENGTH "
                     "[DEVICE [DTYPE]]\n");
        return 2;
    }
    const std::string mode = argv[1];
    es::initRuntime(0);
    auto ckpt = es::Checkpoint::open(argv[2]);
    es::ModelSpec spec = es::ModelSpec::fromCheckpoint(*ckpt);
    if (mode == "static") {
        es::StaticOptions opt;
        opt.analyses = es::parseStaticList(argc > 3 ? argv[3] : "S1,S2,S4");
        if (argc > 4 && std::string(argv[4]) != "all") opt.layers = {std::stoi(argv[4])};
        if (argc > 5) {
            opt.torchProducts = std::string(argv[5]) == "torch";
            opt.device = opt.torchProducts ? "cpu" : argv[5];
        }
        const double baseline = rss().first;
        RssSampler sampler;
        auto t0 = Clock::now();
        auto res = es::staticAnalyses(*ckpt, spec, nullptr, opt);
        const double s = since(t0);
        sampler.stop();
        std::printf(
            "{\"seconds\": %.4f, \"baseline_anon_mb\": %.1f, \"peak_anon_mb\": %.1f, \"peak_file_mb\": %.1f, "
            "\"results\": %zu}\n",
            s, baseline, sampler.peakAnon, sampler.peakFile, res.size());
        return 0;
    }
    if (mode == "dynamic" && argc >= 5 && argc <= 7) {
        const int P = std::stoi(argv[3]), len = std::stoi(argv[4]);
        es::LoadOptions lo;  // the trace's records and the analyses' results come back to the host
        if (argc > 5) lo.device = argv[5];
        if (argc > 6) lo.dtype = argv[6];
        std::mt19937 rng(0);
        std::vector<std::vector<int64_t>> prompts(static_cast<size_t>(P));
        for (auto& p : prompts)
            for (int i = 0; i < len; ++i) p.push_back(static_cast<int64_t>(rng() % static_cast<uint32_t>(spec.vocab)));
        auto model = es::Model::load(ckpt, spec, lo);
        model->trace({prompts[0]}, {});  // warm-up
        ckpt->fingerprint();
        auto t0 = Clock::now();
        es::RunTrace rt = model->trace(prompts, {});
        const double traceS = since(t0);
        es::TraceOptions all;
        all.allExperts = true;
        t0 = Clock::now();
        es::Model::load(ckpt, spec, lo)->trace(prompts, all);
        const double allS = since(t0);
        es::DynamicOptions opt;
        opt.analyses = {"D1", "D2"};
        opt.device = lo.device;
        opt.dtype = lo.dtype;
        const double baseline = rss().first;
        RssSampler sampler;
        t0 = Clock::now();
        auto res = es::dynamicAnalyses(ckpt, spec, nullptr, "bench", prompts, rt.layers, opt);
        const double dynS = since(t0);
        sampler.stop();
        std::printf(
            "{\"trace_s\": %.4f, \"all_experts_s\": %.4f, \"dynamic_s\": %.4f, \"tokens\": %d, "
            "\"dynamic_anon_mb\": %.1f}\n",
            traceS, allS, dynS, P * len, sampler.peakAnon - baseline);
        return 0;
    }
    std::fprintf(stderr, "bad arguments\n");
    return 2;
}
