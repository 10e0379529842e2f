// Package opsjson holds the JSON form of a page of blocked keys, which the
// admin page's api/keys and the command's keys --json print alike.
package opsjson

import (
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// Keys is a page of blocked keys.
type Keys struct {
	Keys []BlockedKey `json:"keys"`
	// Next is the cursor of the next page; null on the last page.
	Next *KeyCursor `json:"next"`
}

// BlockedKey is one key of a page.
type BlockedKey struct {
	Topic            string  `json:"topic"`
	Key              string  `json:"key"`
	HeadID           int64   `json:"head_id"`
	State            string  `json:"state"`
	Attempts         int     `json:"attempts"`
	LastError        string  `json:"last_error"`
	HeadAgeSeconds   float64 `json:"head_age_seconds"`
	RetryInSeconds   float64 `json:"retry_in_seconds"`
	Behind           int     `json:"behind"`
	BehindCapped     bool    `json:"behind_capped"`
	BehindAgeSeconds float64 `json:"behind_age_seconds"`
}

// KeyCursor is where the next page starts: after this topic and key.
type KeyCursor struct {
	AfterTopic string `json:"after_topic"`
	AfterKey   string `json:"after_key"`
}

// NewKeys returns the page of keys, continued at next (nil on the last
// page).
func NewKeys(keys []outbox.BlockedKey, next *KeyCursor) Keys {
	out := Keys{Keys: make([]BlockedKey, 0, len(keys)), Next: next}
	for _, b := range keys {
		out.Keys = append(out.Keys, BlockedKey{
			Topic: b.Topic, Key: b.Key, HeadID: b.HeadID, State: b.State, Attempts: b.Attempts, LastError: b.LastError,
			HeadAgeSeconds: b.HeadAge.Seconds(), RetryInSeconds: b.RetryIn.Seconds(),
			Behind: b.Behind, BehindCapped: b.BehindCapped, BehindAgeSeconds: b.BehindAge.Seconds(),
		})
	}
	return out
}
