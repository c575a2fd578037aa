// expertscope-verify FILE: reads a session file completely (structure, shapes, every byte of
// data through its checksums). Exit 0 when sound; 1 with the error on stderr. The CLI and the
// GUI run it as a separate process, so a file that crashes the HDF5 library cannot crash them.
#include <cstdio>
#include <exception>

#include "session/session.h"

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: expertscope-verify SESSION.h5\n");
        return 2;
    }
    try {
        es::verifySession(argv[1]);
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
}
