package config_test

import (
	"fmt"
	"os"

	"github.com/e0a82c8c/watermill-outbox/config"
)

func ExampleDefault() {
	c := config.Default()
	fmt.Println("table:", c.Table)
	fmt.Println("polling interval:", c.PollingInterval)
	fmt.Println("batch size:", c.BatchSize)
	fmt.Println("max retry count:", c.MaxRetryCount)
	fmt.Println("claim timeout:", c.ClaimTimeout)
	fmt.Println("retry backoff:", c.RetryBackoffMin, "to", c.RetryBackoffMax)
	fmt.Println("published retention:", c.PublishedRetention)
	fmt.Println("max in flight:", c.MaxInFlight)
	// Output:
	// table: watermill_outbox
	// polling interval: 1s
	// batch size: 100
	// max retry count: 5
	// claim timeout: 5m0s
	// retry backoff: 1s to 1m0s
	// published retention: 0s
	// max in flight: 1000
}

func ExampleFromEnv() {
	// Usually set by the deployment.
	os.Setenv("OUTBOX_BATCH_SIZE", "500")
	os.Setenv("OUTBOX_POLLING_INTERVAL_SECONDS", "0.25")
	os.Setenv("OUTBOX_CLAIM_TIMEOUT_SECONDS", "90")
	defer os.Unsetenv("OUTBOX_BATCH_SIZE")
	defer os.Unsetenv("OUTBOX_POLLING_INTERVAL_SECONDS")
	defer os.Unsetenv("OUTBOX_CLAIM_TIMEOUT_SECONDS")

	c, err := config.FromEnv()
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("batch size:", c.BatchSize)
	fmt.Println("polling interval:", c.PollingInterval)
	fmt.Println("claim timeout:", c.ClaimTimeout)
	fmt.Println("max retry count:", c.MaxRetryCount) // unset: the default

	// An explicit 0 is a mistake, not a request for the default.
	os.Setenv("OUTBOX_BATCH_SIZE", "0")
	_, err = config.FromEnv()
	fmt.Println(err)
	// Output:
	// batch size: 500
	// polling interval: 250ms
	// claim timeout: 1m30s
	// max retry count: 5
	// config: OUTBOX_BATCH_SIZE: invalid value "0": must be between 1 and 10000
}
