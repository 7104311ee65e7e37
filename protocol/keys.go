package protocol

import "fmt"

// AttemptKey names one attempt of a job's round, as PollTaskRequest.done
// lists them: "job/round/attempt". A rescheduled round is a new attempt, so
// a worker whose update was accepted in an aborted attempt gets the task again.
func AttemptKey(job string, round, attempt uint32) string {
	return fmt.Sprintf("%s/%d/%d", job, round, attempt)
}

// EvalKey names a federated evaluation task (a worker's report on round's
// model) in PollTaskRequest.done.
func EvalKey(job string, round uint32) string {
	return fmt.Sprintf("%s/eval/%d", job, round)
}
