// Errors as values.  Every layer returns a Status (or Result<T>); only the
// command-line layer (cli.cc) turns an ErrorKind into an exit code and a
// "kvmcdp: error: ..." line.  The kinds are few because scripts depend on
// the exit codes they map to (man/kvmcdp.1, EXIT STATUS).
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace kvmcdp {

enum class ErrorKind {
  kFailure,         // anything else (I/O error, out of space, ...)
  kUsage,           // bad arguments
  kQemu,            // QMP transport failure, timeout or command error
  kDamaged,         // a journal or tree that fails verification
  kBusy,            // another kvmcdp process holds the store
  kNotRecoverable,  // the requested point cannot be restored
  kNotFound,        // no such store, mark, snapshot, node
  kExists,          // the output is there already and was not to be replaced
  kNotProtected,    // status --check: the drive is not protected right now
};

// Why an operation failed, for the code that decides what to do next (end
// a session quietly, retry, give up).  Set by the code that saw it happen;
// never an input to the exit code, which is the ErrorKind's alone.
enum class Cause {
  kNone,
  kPeerClosed,      // the other end closed the connection in order
  kConnectionLost,  // the connection broke (reset, broken pipe)
  kTimeout,         // the other end did not answer or stopped reading in time
  kRefused,         // the other end answered no (a remote ERROR message)
};

class Status {
 public:
  Status() = default;
  Status(ErrorKind kind, std::string message, Cause cause = Cause::kNone)
      : error_(Error{kind, std::move(message), cause}) {}
  static Status ok() { return {}; }

  bool is_ok() const { return !error_; }
  explicit operator bool() const { return is_ok(); }
  ErrorKind kind() const { return error_->kind; }
  const std::string& message() const { return error_->message; }
  Cause cause() const { return error_ ? error_->cause : Cause::kNone; }

 private:
  struct Error {
    ErrorKind kind;
    std::string message;
    Cause cause;
  };
  std::optional<Error> error_;
};

template <typename T>
class Result {
 public:
  Result(T value) : v_(std::move(value)) {}
  Result(Status error) : v_(std::move(error)) {}
  Result(ErrorKind kind, std::string message)
      : v_(Status(kind, std::move(message))) {}

  bool is_ok() const { return v_.index() == 0; }
  explicit operator bool() const { return is_ok(); }
  T& value() { return std::get<0>(v_); }
  const T& value() const { return std::get<0>(v_); }
  T& operator*() { return value(); }
  T* operator->() { return &value(); }
  const Status& status() const { return std::get<1>(v_); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace kvmcdp
