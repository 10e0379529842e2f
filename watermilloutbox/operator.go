package watermilloutbox

// The operator's reads and writes (Stats, BlockedKeys and the dead-row
// methods of SQLStore): the head states BlockedKeys reports, and the bounds
// that keep one call's cost bounded whatever the backlog.
const (
	// HeadWaiting: the head of a blocked key failed and is backing off; it
	// is retried when RetryIn has passed (BlockedKey.Head).
	HeadWaiting = "waiting"
	// HeadDead: the head is dead and, under StrictOrder, holds its key
	// until it is requeued or skipped.
	HeadDead = "dead"

	// StatsLimit is the most rows of one topic Stats reads per state group
	// (undelivered, dead). Measured on PostgreSQL with 1,000,000 pending
	// rows over 5 topics: 14 ms a call (40 ms the first); at 10,000 it took
	// twice as long.
	StatsLimit = 5000

	// MaxBlockedPage is the largest page BlockedKeys returns.
	MaxBlockedPage = 500

	// BlockedBehindLimit is the most rows behind one blocked key
	// BlockedKeys counts: a key with more shows BehindCapped. With it a
	// page of keys costs at most Limit × BlockedBehindLimit index entries.
	BlockedBehindLimit = 1000

	// DeadBatchSize is the most dead rows one statement of the operator's
	// writes changes (Requeue, PurgeDead, RequeueTopic, RequeueAll,
	// PurgeDeadTopic, PurgeAllDead). Each batch commits on its own, so a
	// million dead rows are a thousand short statements, never one
	// transaction holding a million row locks and a huge undo log.
	DeadBatchSize = 1000
)
