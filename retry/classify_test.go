package retry_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"

	"github.com/hashicorp/go-multierror"
	pkgerrors "github.com/pkg/errors"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/retry"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

func TestDefaultClassifier(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name string
		err  error
		want retry.Kind
	}{
		// Marks.
		{"PermanentError", retry.PermanentError(errors.New("bad")), retry.Permanent},
		{"UnavailableError", retry.UnavailableError(errors.New("down")), retry.Unavailable},
		{"PermanentError wrapped", fmt.Errorf("publish: %w", retry.PermanentError(errors.New("bad"))), retry.Permanent},
		{"mark overrides sentinel", retry.PermanentError(io.EOF), retry.Permanent},
		{"outermost mark wins", retry.UnavailableError(retry.PermanentError(errors.New("x"))), retry.Unavailable},
		{"mark inside pkg/errors", pkgerrors.Wrap(retry.PermanentError(errors.New("bad")), "publish"), retry.Permanent},

		// Closed publishers: shutdown.
		{"ErrClosed", fmt.Errorf("kafka publisher: %w", outbox.ErrClosed), retry.Unavailable},

		// Network and context.
		{"dial refused", &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, retry.Unavailable},
		{"ECONNREFUSED", fmt.Errorf("dial: %w", syscall.ECONNREFUSED), retry.Unavailable},
		{"ECONNRESET", fmt.Errorf("read: %w", syscall.ECONNRESET), retry.Unavailable},
		{"EPIPE", pkgerrors.Wrap(syscall.EPIPE, "write"), retry.Unavailable},
		{"net.ErrClosed", fmt.Errorf("write: %w", net.ErrClosed), retry.Unavailable},
		{"DNS", &net.DNSError{Err: "no such host", Name: "kafka", IsNotFound: true}, retry.Unavailable},
		{"io.EOF", pkgerrors.Wrap(io.EOF, "cannot publish msg"), retry.Unavailable},
		{"io.ErrUnexpectedEOF", fmt.Errorf("x: %w", io.ErrUnexpectedEOF), retry.Unavailable},
		{"context.Canceled", fmt.Errorf("publish: %w", context.Canceled), retry.Unavailable},
		{"context.DeadlineExceeded", context.DeadlineExceeded, retry.Unavailable},
		{"errors.Join transient and unavailable", errors.Join(errors.New("x"), io.EOF), retry.Unavailable},
		{"go-multierror", multierror.Append(errors.New("x"), io.EOF), retry.Unavailable},

		// Anything else, broker errors included: the sinks mark theirs.
		{"plain", errors.New("boom"), retry.Transient},
		{"text of a closed publisher is not enough", errors.New("publisher closed"), retry.Transient},
		{"nil", nil, retry.Transient},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, retry.DefaultClassifier(tt.err), "error: %v", tt.err)
		})
	}
}

func TestMarksAreTransparent(t *testing.T) {
	t.Parallel()

	for _, mark := range []func(error) error{retry.PermanentError, retry.UnavailableError} {
		cause := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
		err := mark(cause)
		require.Equal(t, cause.Error(), err.Error())
		require.ErrorIs(t, err, cause)
		var got *net.OpError
		require.ErrorAs(t, err, &got)
		require.Same(t, cause, got)

		require.NoError(t, mark(nil))
	}
}

func TestKindString(t *testing.T) {
	t.Parallel()

	require.Equal(t, "transient", retry.Transient.String())
	require.Equal(t, "unavailable", retry.Unavailable.String())
	require.Equal(t, "permanent", retry.Permanent.String())
	require.Equal(t, "Kind(0)", retry.Kind(0).String())
}
