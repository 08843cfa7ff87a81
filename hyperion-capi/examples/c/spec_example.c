#include <hyperion/utils/mmap_loader.h>
#include <stdio.h>

int main() {
    // Create a custom configuration
    HyperionMmapConfig config = hyperionCreateDefaultMmapConfig();
    config.maxCacheSize = 100 * 1024 * 1024; // 100MB cache
    
    // Open the model
    HyperionMappedModel* model = hyperionOpenMappedModel("model.tmai", &config);
    if (!model) {
        printf("Failed to open model\n");
        return 1;
    }
    
    // Get layer count
    int layerCount = hyperionGetMappedLayerCount(model);
    printf("Model has %d layers\n", layerCount);
    
    // Load and use each layer
    for (int i = 0; i < layerCount; i++) {
        void* weights = hyperionGetLayerWeights(model, i);
        if (weights) {
            // Use the weights...
            printf("Layer %d loaded successfully\n", i);
        }
        
        // Optionally release the layer to save memory
        if (i % 2 == 0) {
            hyperionReleaseLayerWeights(model, i);
        }
    }
    
    // Print memory usage
    printf("Memory usage: %.2f MB\n", 
           hyperionGetMappedModelMemoryUsage(model) / (1024.0 * 1024.0));
    
    // Close the model
    hyperionCloseMappedModel(model);
    
    return 0;
}
