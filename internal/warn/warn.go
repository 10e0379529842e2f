// Package warn logs at warning level through a Watermill logger.
package warn

import "github.com/ThreeDotsLabs/watermill"

// warner is a logger with a warning level (Watermill's LoggerAdapter has
// none), such as watermill.SlogLoggerAdapter.
type warner interface {
	Warn(msg string, fields watermill.LogFields)
}

// Log logs at warning level where the logger has one, else at error level.
func Log(logger watermill.LoggerAdapter, msg string, err error, fields watermill.LogFields) {
	if w, ok := logger.(warner); ok {
		if err != nil {
			fields = fields.Add(watermill.LogFields{"error": err.Error()})
		}
		w.Warn(msg, fields)
		return
	}
	logger.Error(msg, err, fields)
}
