// RpcError: the "<RPC>: <STATUS_CODE_NAME>: <message>" form and the canonical code names.
#include "client/rpc_error.h"

#include <gtest/gtest.h>

namespace hvlm::client {
namespace {

TEST(RpcError, MessageNamesTheRpcAndTheCode) {
  const RpcError error("OpenSession",
                       grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "session budget spent"));
  EXPECT_STREQ(error.what(), "OpenSession: RESOURCE_EXHAUSTED: session budget spent");
  EXPECT_EQ(error.rpc(), "OpenSession");
  EXPECT_EQ(error.code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST(RpcError, EveryCanonicalCodeHasItsName) {
  EXPECT_EQ(status_code_name(grpc::StatusCode::OK), "OK");
  EXPECT_EQ(status_code_name(grpc::StatusCode::CANCELLED), "CANCELLED");
  EXPECT_EQ(status_code_name(grpc::StatusCode::INVALID_ARGUMENT), "INVALID_ARGUMENT");
  EXPECT_EQ(status_code_name(grpc::StatusCode::DEADLINE_EXCEEDED), "DEADLINE_EXCEEDED");
  EXPECT_EQ(status_code_name(grpc::StatusCode::NOT_FOUND), "NOT_FOUND");
  EXPECT_EQ(status_code_name(grpc::StatusCode::ALREADY_EXISTS), "ALREADY_EXISTS");
  EXPECT_EQ(status_code_name(grpc::StatusCode::FAILED_PRECONDITION), "FAILED_PRECONDITION");
  EXPECT_EQ(status_code_name(grpc::StatusCode::UNAVAILABLE), "UNAVAILABLE");
  EXPECT_EQ(status_code_name(grpc::StatusCode::UNAUTHENTICATED), "UNAUTHENTICATED");
  EXPECT_EQ(status_code_name(static_cast<grpc::StatusCode>(99)), "CODE_99");
}

}  // namespace
}  // namespace hvlm::client
