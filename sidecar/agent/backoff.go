package agent

import (
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// maxHint bounds how long a refusal's retry hint can hold the agent
// back: the hint comes from the authenticated control plane, but a
// certificate must not be left to expire on a bad number.
const maxHint = 5 * time.Minute

// backoff spaces the retries of a failing call: exponential from base,
// doubling up to a cap, each wait drawn between half and all of the
// current step so agents that failed together do not retry together.
// A refusal that says when to come back (ResourceExhausted with a
// RetryInfo, as the CA's rate limit sends) is never retried earlier;
// the wait then is the hint plus up to a tenth of it. Not safe for
// concurrent use.
type backoff struct {
	base time.Duration
	rand func() float64 // in [0,1)
	step time.Duration  // the current step; zero before the first failure
}

// wait returns how long to wait after err, with the exponential part
// capped at limit, and advances the step.
func (b *backoff) wait(err error, limit time.Duration) time.Duration {
	if b.step == 0 {
		b.step = b.base
	}
	step := min(b.step, max(limit, b.base))
	b.step = min(2*b.step, max(limit, b.base))
	d := step/2 + time.Duration(b.rand()*float64(step/2))
	if hint := retryHint(err); hint > 0 {
		d = max(d, hint+time.Duration(b.rand()*float64(hint/10)))
	}
	return d
}

// reset starts the next series of failures from base again.
func (b *backoff) reset() { b.step = 0 }

// retryHint is the wait a ResourceExhausted refusal asks for, at most
// maxHint; zero for any other error.
func retryHint(err error) time.Duration {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.ResourceExhausted {
		return 0
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay().IsValid() {
			return min(max(ri.GetRetryDelay().AsDuration(), 0), maxHint)
		}
	}
	return 0
}
