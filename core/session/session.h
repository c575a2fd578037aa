#pragma once
// The HDF5 session file: the model reference and the runs with their routing traces.
// Layout: docs/session-format.md. Saving never modifies the previous file in place: the new
// content is written to a temporary file beside the target, flushed, then renamed over it.
#include <cstdint>
#include <string>
#include <vector>

#include "trace/trace.h"

namespace es {

constexpr int kSessionFormatVersion = 1;

struct SessionModel {
    std::string modelType;
    int64_t numLayers = 0, numExperts = 0, topK = 0, hidden = 0;
    std::string configJson, checkpointPath, fingerprint;
};

// Adds run `runName` to the session at `path`, creating the file if needed. Errors (naming the
// file and the field) when the file is not a session, belongs to a checkpoint with another
// fingerprint, or already has a run of that name; the previous file is then left untouched.
void appendRun(const std::string& path, const SessionModel& model, const std::string& runName, const RunTrace& trace);

// Names of the runs stored in a session (for tools and tests).
std::vector<std::string> listRuns(const std::string& path);

}  // namespace es
