// expertscope-verify [--structure] FILE: reads a session file completely (structure, shapes,
// every byte of data through its checksums), or with --structure only what opening it reads. Exit 0 when sound; 1 with
// the error on stderr. The CLI and the GUI run it as a separate process, so a file that crashes the HDF5 library cannot
// crash them.
#include <cstdio>
#include <exception>
#include <string>

#include "session/session.h"

int main(int argc, char** argv) {
    const bool structure = argc == 3 && std::string(argv[1]) == "--structure";
    if (argc != 2 && !structure) {
        std::fprintf(stderr, "usage: expertscope-verify [--structure] SESSION.h5\n");
        return 2;
    }
    try {
        if (structure) es::Session::open(argv[2]);
        else es::verifySession(argv[1]);
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
}
