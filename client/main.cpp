// hvlm-client: the command-line client of an hvlm server. Subcommands list, stream and load
// (client/command_line.h has the usage). Exit status: 0 success; 1 a failed RPC, an unusable
// file or a load run with errors; 2 a bad command line.
#include "client/attention_client.h"
#include "client/command_line.h"
#include "client/load_test.h"
#include "client/rpc_error.h"
#include "client/stack_listing.h"
#include "client/stream_session.h"

#include <exception>
#include <iostream>
#include <string>
#include <vector>

namespace {

constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

int run(const hvlm::client::Command& command) {
  using hvlm::client::CommandKind;
  switch (command.kind) {
    case CommandKind::kHelp:
      std::cout << command.help_text;
      return 0;
    case CommandKind::kList: {
      const hvlm::client::AttentionClient client(hvlm::client::make_channel(command.connection),
                                                 command.connection.timeout_seconds);
      hvlm::client::print_stacks(client.list_stacks(), std::cout);
      return 0;
    }
    case CommandKind::kStream:
      hvlm::client::run_stream(command.stream, std::cout);
      return 0;
    case CommandKind::kLoad: {
      const hvlm::client::RunSummary summary = hvlm::client::run_load(command.load, std::cout);
      if (summary.errors == 0) return 0;
      std::cerr << "error: " << summary.first_error << " (" << summary.errors << " error"
                << (summary.errors == 1 ? "" : "s") << " in all)\n";
      return kExitFailure;
    }
  }
  return kExitFailure;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  try {
    return run(hvlm::client::parse_command_line(args));
  } catch (const hvlm::client::UsageError& e) {
    std::cerr << "error: " << e.what() << "\nrun 'hvlm-client --help' for usage\n";
    return kExitUsage;
  } catch (const std::exception& e) {
    // RpcError reads "<RPC>: <STATUS_CODE_NAME>: <message>"; the rest name their file or cause.
    std::cerr << "error: " << e.what() << "\n";
    return kExitFailure;
  }
}
