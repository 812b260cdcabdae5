// composecheck loads a Compose file with the reference Compose parser (compose-go, the
// library `docker compose` is built on) as `docker compose config` does: the schema,
// interpolation of ${VAR} from the process environment (a missing ${VAR:?msg} is an
// error), normalization and the consistency checks (every depends_on target, volume,
// network, secret and config declared), with every profile enabled. No .env file is
// read: the environment is exactly the caller's, so a test controls it.
//
//	composecheck path/to/docker-compose.yml
//
// On success: the normalized project as JSON on stdout, exit 0. On any error: the
// error on one line on stderr, exit 1. Built by deploy/bootstrap.sh into ./bin/;
// tests/unit/test_compose_spec.py runs it.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
)

func fail(err error) {
	msg := strings.Join(strings.Fields(err.Error()), " ")
	fmt.Fprintln(os.Stderr, "composecheck: "+msg)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 2 {
		fail(fmt.Errorf("usage: composecheck <path/to/docker-compose.yml>"))
	}
	path, err := filepath.Abs(os.Args[1])
	if err != nil {
		fail(err)
	}
	options, err := cli.NewProjectOptions(
		[]string{path},
		cli.WithWorkingDirectory(filepath.Dir(path)),
		cli.WithOsEnv,
		cli.WithProfiles([]string{"*"}),
		cli.WithInterpolation(true),
		cli.WithNormalization(true),
		cli.WithConsistency(true),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		fail(err)
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		fail(err)
	}
	out, err := project.MarshalJSON()
	if err != nil {
		fail(err)
	}
	if _, err := os.Stdout.Write(append(out, '\n')); err != nil {
		fail(err)
	}
}
