package main

import (
	"fmt"
	"os"
	"reflect"

	"github.com/caarlos0/env/v11"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/internal/envvar"
)

// commandVariables are the command's own OUTBOX_* variables, beside those
// of package config.
var commandVariables = []string{
	"OUTBOX_DATABASE_URL", "OUTBOX_DATABASE_DRIVER", "OUTBOX_SINK", "OUTBOX_KAFKA_BROKERS", "OUTBOX_KAFKA_MAX_MESSAGE_BYTES",
	"OUTBOX_AMQP_URL", "OUTBOX_METRICS_ADDR", "OUTBOX_HEALTH_MAX_PAUSE_SECONDS", "OUTBOX_ADMIN", "OUTBOX_ADMIN_WRITES",
}

// warnUnknownVariables warns, once a run, about each OUTBOX_* variable that
// names no setting: a misspelt one is otherwise ignored without a word.
func (a *app) warnUnknownVariables() {
	for _, v := range envvar.Unknown(config.DefaultEnvPrefix, env.ToMap(os.Environ()), reflect.TypeFor[config.Config](), commandVariables...) {
		fmt.Fprintf(a.stderr, "%s: warning: %s is not a setting and is ignored\n", name, v)
	}
}
