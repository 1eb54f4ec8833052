package store

import (
	"context"
	"fmt"

	"github.com/jmoiron/sqlx"
)

// DemoFamily is the family `sagapush demo` seeds: a project with its
// facilitator and storyteller, the way Saga's own tables hold them.
type DemoFamily struct {
	ProjectID, ProjectName         string
	FacilitatorID, FacilitatorName string
	StorytellerID, StorytellerName string
}

// Demo is the family the demo command seeds.
var Demo = DemoFamily{
	ProjectID: "demo-project", ProjectName: "The Ellis family",
	FacilitatorID: "demo-facilitator", FacilitatorName: "Margaret Ellis",
	StorytellerID: "demo-storyteller", StorytellerName: "Daniel Ellis",
}

// SeedDemo writes the demo family into a migrated database: two users and a
// project whose facilitator_id and storyteller_id make them its members
// (docs/protocol.md, embedded mode and several instances: access). Rows that
// exist are left as they are, so it may run again.
func SeedDemo(ctx context.Context, databaseURL string, f DemoFamily) error {
	db, err := sqlx.Open("postgres", databaseURL)
	if err != nil {
		return err
	}
	defer db.Close()
	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for _, u := range [][2]string{{f.FacilitatorID, f.FacilitatorName}, {f.StorytellerID, f.StorytellerName}} {
		if _, err := tx.ExecContext(ctx, `INSERT INTO users (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING`, u[0], u[1]); err != nil {
			return fmt.Errorf("seeding users: %w", err)
		}
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO projects (id, name, facilitator_id, storyteller_id) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING`,
		f.ProjectID, f.ProjectName, f.FacilitatorID, f.StorytellerID); err != nil {
		return fmt.Errorf("seeding the project: %w", err)
	}
	return tx.Commit()
}
