package watermilloutbox

// SetClaimHook lets tests hold a MySQL claim transaction open.
func SetClaimHook(s *SQLStore, hook func()) { s.claimHook = hook }
