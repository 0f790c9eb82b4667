package engine_test

import (
	"testing"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/engine/enginetest"
)

func TestMemoryConformance(t *testing.T) {
	enginetest.Run(t, func(t *testing.T, logLen int) enginetest.Engine {
		return engine.NewMemory(engine.MemoryConfig{LogLen: logLen})
	})
}

func TestMemoryNotes(t *testing.T) {
	enginetest.RunNotes(t, func(t *testing.T) enginetest.NoteEngine {
		return engine.NewMemory(engine.MemoryConfig{})
	})
}
