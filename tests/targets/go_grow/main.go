// SPDX-License-Identifier: Apache-2.0
// A Go program (no malloc family: its runtime maps memory itself) that grows a slice of 1 MiB
// []byte buffers when told "go", then waits to be killed.
package main

import (
	"bufio"
	"fmt"
	"os"
	"time"
)

var kept [][]byte

//go:noinline
func growSlices(count int) {
	for i := 0; i < count; i++ {
		buffer := make([]byte, 1<<20)
		for at := 0; at < len(buffer); at += 4096 {
			buffer[at] = 1 // touch every page: resident, not only reserved
		}
		kept = append(kept, buffer)
		time.Sleep(50 * time.Millisecond)
	}
}

func main() {
	fmt.Printf("ready %d\n", os.Getpid())
	input := bufio.NewReader(os.Stdin)
	input.ReadString('\n')
	growSlices(48)
	fmt.Println("done")
	for {
		time.Sleep(time.Hour)
	}
}
