package retry

import "strconv"

// Kind is the verdict on a failed publish: what the outbox does with the row.
type Kind int

const (
	// Transient charges one attempt; the row is due again after backoff,
	// and is dead once its retry budget is spent.
	Transient Kind = iota + 1
	// Unavailable means the destination could not be reached: no attempt
	// is charged and the claim is released, so an outage never kills rows.
	Unavailable
	// Permanent means the destination can never accept the message (too
	// large, invalid topic): the row is dead at once.
	Permanent
)

// String returns "transient", "unavailable" or "permanent", and "Kind(n)"
// for any other value.
func (k Kind) String() string {
	switch k {
	case Transient:
		return "transient"
	case Unavailable:
		return "unavailable"
	case Permanent:
		return "permanent"
	default:
		return "Kind(" + strconv.Itoa(int(k)) + ")"
	}
}
