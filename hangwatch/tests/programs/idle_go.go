// idle_go: an idle Go program: a pool of goroutines waiting on a channel for work, main
// waiting for SIGTERM. stdout: "pid <pid>", then "ready".
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	work := make(chan int)
	for i := 0; i < 8; i++ {
		go func() {
			for range work {
			}
		}()
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM)
	fmt.Printf("pid %d\n", os.Getpid())
	fmt.Println("ready")
	<-stop
	close(work)
}
