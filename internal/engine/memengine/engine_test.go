package memengine_test

import (
	"testing"

	"github.com/stagecast/stagecast/internal/engine/enginetest"
	"github.com/stagecast/stagecast/internal/engine/memengine"
)

func TestMemoryConformance(t *testing.T) {
	enginetest.Run(t, func(t *testing.T, logLen int) enginetest.Engine {
		return memengine.New(memengine.Config{LogLen: logLen})
	})
}

func TestMemoryNotes(t *testing.T) {
	enginetest.RunNotes(t, func(t *testing.T) enginetest.NoteEngine {
		return memengine.New(memengine.Config{})
	})
}
