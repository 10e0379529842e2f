package retry_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/retry"
)

func TestOutcome(t *testing.T) {
	t.Parallel()

	ctx, o := retry.ContextWithOutcome(context.Background())
	got, ok := retry.OutcomeFromContext(ctx)
	require.True(t, ok)
	require.Same(t, o, got)

	_, _, ok = o.Get()
	require.False(t, ok, "nothing recorded yet")

	cause := errors.New("too large")
	o.Set(retry.Permanent, cause)
	kind, err, ok := o.Get()
	require.True(t, ok)
	require.Equal(t, retry.Permanent, kind)
	require.Same(t, cause, err)

	o.Set(retry.Transient, nil)
	kind, err, ok = o.Get()
	require.True(t, ok)
	require.Equal(t, retry.Transient, kind, "the last verdict wins")
	require.NoError(t, err)

	// A derived context sees the same slot; a new one gets a fresh slot.
	derived, cancel := context.WithCancel(ctx)
	defer cancel()
	got, ok = retry.OutcomeFromContext(derived)
	require.True(t, ok)
	require.Same(t, o, got)
	_, fresh := retry.ContextWithOutcome(ctx)
	require.NotSame(t, o, fresh)

	_, ok = retry.OutcomeFromContext(context.Background())
	require.False(t, ok)
}

func TestReport(t *testing.T) {
	t.Parallel()

	msg := message.NewMessage("uuid-1", nil)
	require.False(t, retry.Report(msg, retry.Permanent, errors.New("x")), "no outcome in the context")

	ctx, o := retry.ContextWithOutcome(context.Background())
	msg.SetContext(ctx)
	cause := errors.New("down")
	require.True(t, retry.Report(msg, retry.Unavailable, cause))
	kind, err, ok := o.Get()
	require.True(t, ok)
	require.Equal(t, retry.Unavailable, kind)
	require.Same(t, cause, err)
}

func TestOutcomeConcurrentUse(t *testing.T) {
	t.Parallel()

	_, o := retry.ContextWithOutcome(context.Background())
	kinds := []retry.Kind{retry.Transient, retry.Unavailable, retry.Permanent}
	errs := make(map[retry.Kind]error, len(kinds))
	for _, k := range kinds {
		errs[k] = fmt.Errorf("%s failure", k)
	}

	var wg sync.WaitGroup
	for i := range 32 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			k := kinds[i%len(kinds)]
			for range 100 {
				o.Set(k, errs[k])
			}
		}()
		go func() {
			defer wg.Done()
			for range 100 {
				if kind, err, ok := o.Get(); ok {
					// Kind and error are always recorded together.
					if errs[kind] != err {
						t.Errorf("torn read: kind %s with error %v", kind, err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()

	kind, err, ok := o.Get()
	require.True(t, ok)
	require.Same(t, errs[kind], err)
}
