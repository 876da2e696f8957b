// Command etcd calls etcdmain.Main: etcd's own server/go.mod has relative
// replace directives, so `go install go.etcd.io/etcd/server/v3@…` cannot work.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
