package config

// FromEnvMap is fromEnvMap, for the tests of package config_test: the
// settings of an environment given as a map.
var FromEnvMap = fromEnvMap
